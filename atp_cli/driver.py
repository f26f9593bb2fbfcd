"""Steps a prompt through decoder segments and drops visual tokens between them.

Segment s evaluates layers [b_s, b_{s+1}) in its own llama.cpp context whose KV cache holds only those
layers. Prefill runs the whole prompt through segment s, hands the attention of its last layer to a
keep function, and feeds only the surviving tokens (with their original positions) to segment s+1.
A dropped token therefore stays in the KV cache of every layer before the boundary, where later tokens
still attend to it, and never enters the cache of any layer after it. Decoding then runs each new
token through all segments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from atp_cli.errors import InputError
from atp_cli.prefix_cache import FirstSegment, PrefixCache, prompt_key
from atp_cli.prompt_input import Prompt
from atp_cli.pruning.base import KeepFn, ModuleInput, check_keep
from atp_cli.runtime.context import ContextConfig, KvStats, LlamaContext
from atp_cli.runtime.model import LlamaModel
from atp_cli.runtime.owner import Closeable
from atp_cli.sampling import Sampler


@dataclass
class PrefillStats:
    """Per-prefill figures the CLI and benchmarks report."""

    n_prompt: int = 0
    n_visual: int = 0
    visual_alive_per_layer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    segment_seconds: list[float] = field(default_factory=list)
    module_seconds: list[float] = field(default_factory=list)
    kept_raster: list[np.ndarray] = field(default_factory=list)  # raster indices kept at each module
    reused_seconds: float = 0.0  # of the prefill's work, loaded from the prefix cache instead of computed

    @property
    def prefill_seconds(self) -> float:
        return sum(self.segment_seconds) + sum(self.module_seconds)

    @property
    def visual_tokens_avg(self) -> float:
        """Visual tokens averaged over all decoder layers (the paper's 'tokens')."""
        return float(self.visual_alive_per_layer.mean()) if self.visual_alive_per_layer.size else 0.0


def segment_ranges(n_layer: int, boundaries: Sequence[int]) -> list[tuple[int, int]]:
    """[(0, b1), (b1, b2), ..., (bk, n_layer)] after checking the boundaries."""
    b = list(boundaries)
    if any(not isinstance(x, (int, np.integer)) for x in b):
        raise InputError(f"boundaries must be integers, got {b}")
    if b != sorted(set(b)) or (b and (b[0] <= 0 or b[-1] >= n_layer)):
        raise InputError(f"boundaries must be strictly increasing inside (0, {n_layer}), got {b}")
    edges = [0, *b, n_layer]
    return list(zip(edges[:-1], edges[1:]))


GROW_STEP = 256  # cells: the later segments' caches start at this size and grow in whole steps (llama.cpp's padding)


def _start_config(config: ContextConfig, segment: int) -> ContextConfig:
    """Segment 0 holds every prompt entry: the whole context. A later segment holds the text and only the visual
    tokens kept so far, so it starts at one step and grows when a prefill or a turn needs more (SegmentedDecoder._room)."""
    return config if segment == 0 or config.n_ctx <= GROW_STEP else config.sized(GROW_STEP)


class SegmentedDecoder(Closeable):
    """Contexts for the segments of one model; one conversation at a time (not thread-safe)."""

    def __init__(
        self,
        model: LlamaModel,
        boundaries: Sequence[int] = (),
        config: ContextConfig = ContextConfig(),
        readout: bool = True,
        stock: bool = False,
    ) -> None:
        """`stock=True` runs the unpatched single-context path (the reference the segments must match)."""
        self.model, self.config = model, config
        self.ranges = segment_ranges(model.n_layer, boundaries)
        if stock and len(self.ranges) > 1:
            raise InputError("a stock decoder has no boundaries")
        self.contexts: list[LlamaContext] = []
        try:
            for i, (b, e) in enumerate(self.ranges):
                last = i == len(self.ranges) - 1
                readout_layer = e - 1 if readout and not last else None
                self.contexts.append(LlamaContext(model, _start_config(config, i), b, e, readout_layer=readout_layer,
                                                  stock=stock))
        except Exception:
            self.close()
            raise
        self.max_cells = self.contexts[0].n_ctx  # what the conversation may hold (segment 0 holds every entry)
        self.next_pos = 0
        self.stats = PrefillStats()
        self.prefix_cache: PrefixCache | None = None  # shared first segments (atp_cli.prefix_cache), when set
        self.stop_token: int | None = None  # end-of-generation token of the last generate(), not fed
        self.generated: list[int] = []  # the tokens the last generate() fed

    @property
    def boundaries(self) -> list[int]:
        return [b for b, _ in self.ranges[1:]]

    def reset(self) -> None:
        """Forget the conversation: empty every KV cache."""
        for ctx in self.contexts:
            ctx.clear()
        self.next_pos = 0
        self.stats = PrefillStats()

    def truncate(self, pos: int) -> None:
        """Roll the conversation back to `pos`: every segment forgets the positions >= pos.

        `prefill` and `extend` call this when they are interrupted (Ctrl-C arrives between two C calls) or fail, so
        each of them either completes or leaves the caches as they were; a caller undoes a whole turn with the
        `next_pos` it saw before the turn."""
        if not 0 <= pos <= self.next_pos:
            raise InputError(f"cannot roll back to position {pos}: the conversation is at {self.next_pos}")
        for ctx in self.contexts:
            ctx.truncate(pos)
        self.next_pos = pos
        self.stop_token = None

    def _atomic(self, run: Callable[[], np.ndarray]) -> np.ndarray:
        """`run()`, undone if anything stops it part way (an error, KeyboardInterrupt). A plain try, no context
        manager: extend runs once per generated token."""
        start, stats = self.next_pos, self.stats
        try:
            return run()
        except BaseException:
            self.truncate(start)
            self.stats = stats
            raise

    # -- prefill ----------------------------------------------------------------------------------

    def prefill(self, prompt: Prompt, keep: KeepFn | None = None) -> np.ndarray:
        """Run `prompt` (continuing the conversation) and return the logits of its last entry.

        With `keep`, the function is called at each boundary with the attention of the layer before it
        and returns the visual positions that go on; without it, nothing is dropped. Interrupted or failed, it
        leaves the caches as they were.
        """
        return self._atomic(lambda: self._prefill(prompt, keep))

    def _prefill(self, prompt: Prompt, keep: KeepFn | None) -> np.ndarray:
        positions = prompt.all_positions()
        if positions[0] < self.next_pos:
            raise InputError(f"prompt starts at position {positions[0]}, the conversation is at {self.next_pos}")
        visual = prompt.visual_mask()
        if keep is not None and any(c.readout_layer is None for c in self.contexts[:-1]):
            raise InputError("this decoder was built without attention readout; it cannot prune")
        stats = PrefillStats(n_prompt=len(prompt), n_visual=int(visual.sum()))
        alive_per_layer = np.zeros(self.model.n_layer, dtype=np.int64)

        hidden: np.ndarray | None = None
        logits = np.zeros(0, dtype=np.float32)
        for s, (b, e) in enumerate(self.ranges):
            ctx = self._room(s, len(positions))
            alive_per_layer[b:e] = int(visual.sum())
            prune_here = keep is not None and ctx.readout_layer is not None and visual.any()
            seen = None  # (attention, cell index) the module reads, when they come from the prefix cache
            if prune_here and s == 0 and self.prefix_cache is not None and self.next_pos == 0:
                hidden, seen, seconds = self._first_segment(prompt, positions, ctx, stats)
                stats.segment_seconds.append(seconds)
            else:
                t0 = time.perf_counter()
                if prune_here:
                    ctx.arm_capture(True)
                hidden = self._run_segment(s, prompt, positions, hidden)
                if prune_here:
                    ctx.arm_capture(False)
                stats.segment_seconds.append(time.perf_counter() - t0)
            if ctx.outputs_logits:
                logits = ctx.logits()
            elif prune_here:
                t0 = time.perf_counter()
                mask = self._module(ctx, e, positions, visual, prompt.visual_origin(), keep, hidden, seen)
                positions, visual, hidden = positions[mask], visual[mask], hidden[mask]
                stats.module_seconds.append(time.perf_counter() - t0)
                stats.kept_raster.append(positions[visual] - prompt.visual_origin())
        stats.visual_alive_per_layer = alive_per_layer
        self.stats = stats
        self.next_pos = int(prompt.all_positions()[-1]) + 1
        return logits

    def _first_segment(self, prompt: Prompt, positions: np.ndarray, ctx: LlamaContext,
                       stats: PrefillStats) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], float]:
        """Layers [0, b1) for `prompt`: loaded from the prefix cache when another strategy with the same first
        boundary computed them, else computed with attention readout and stored. (hidden states, what the module
        reads, the seconds the computation takes); a reuse counts those seconds in `stats.reused_seconds`."""
        key = prompt_key(prompt, self.ranges[0], ctx.readout_layer)
        hit = self.prefix_cache.get(key)
        if hit is not None:
            t0 = time.perf_counter()
            ctx.load_state(hit.state, hit.pos_max, hit.n_tokens)
            stats.reused_seconds += max(0.0, hit.seconds - (time.perf_counter() - t0))
            return hit.hidden, (hit.attention, hit.cell_of), hit.seconds
        t0 = time.perf_counter()
        ctx.arm_capture(True)
        hidden = self._run_segment(0, prompt, positions, None)
        ctx.arm_capture(False)
        seconds = time.perf_counter() - t0
        seen = (ctx.captured_attention(), self._cell_index(ctx))
        hidden.setflags(write=False)
        for a in seen:
            a.setflags(write=False)
        self.prefix_cache.put(key, FirstSegment(ctx.state(), ctx.pos_max, ctx.n_tokens, hidden, *seen, seconds))
        return hidden, seen, seconds

    def _run_segment(self, s: int, prompt: Prompt, positions: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
        """Feed segment s; return the hidden states it outputs (empty for the last segment)."""
        ctx = self.contexts[s]
        if s > 0:
            ctx.decode_embd(hidden, positions)
            return ctx.hidden_all() if not ctx.outputs_logits else np.zeros((0, 0), np.float32)
        parts = []
        for span, sl in prompt.span_slices():
            want_last = sl.stop == len(prompt)
            if span.is_visual:
                ctx.decode_embd(span.embd, positions[sl], want_last)
            else:
                ctx.decode_tokens(span.tokens, positions[sl], want_last)
            if not ctx.outputs_logits:
                parts.append(ctx.hidden_all())
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), np.float32)

    def _module(
        self,
        ctx: LlamaContext,
        boundary: int,
        positions: np.ndarray,
        visual: np.ndarray,
        origin: int,
        keep: KeepFn,
        hidden: np.ndarray,
        seen: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Call the keep function at `boundary`; return the mask of entries that go on. `seen`: the attention and
        cell index to read instead of the context's own (the prefix cache's)."""
        # attention rows = entries fed, in order; columns = KV cells
        attn, cell_of = seen if seen is not None else (ctx.captured_attention(), self._cell_index(ctx))
        if attn.shape[0] != len(positions):
            raise InputError(f"captured {attn.shape[0]} attention rows for {len(positions)} tokens")
        vis_pos = positions[visual]
        last_visual = np.flatnonzero(visual)[-1]
        query_rows = np.flatnonzero(~visual & (np.arange(len(positions)) > last_visual))
        vis_cells = cell_of[vis_pos]
        view = ModuleInput(
            boundary=boundary,
            layer=boundary - 1,
            visual_pos=vis_pos,
            query_pos=positions[query_rows],
            attn_vv=attn[np.ix_(np.flatnonzero(visual), vis_cells)],
            attn_tv=attn[np.ix_(query_rows, vis_cells)],
            visual_origin=origin,
            n_layer=self.model.n_layer,
            hidden_v=hidden[visual],
            hidden_q=hidden[query_rows],
        )
        kept = check_keep(keep(view), vis_pos, boundary)
        return ~visual | np.isin(positions, kept)

    @staticmethod
    def _cell_index(ctx: LlamaContext) -> np.ndarray:
        """Array mapping position -> KV cell of `ctx` (-1 where the position is not cached)."""
        cell_pos = ctx.cell_positions()
        used = cell_pos >= 0
        table = np.full(int(cell_pos.max()) + 1 if used.any() else 0, -1, dtype=np.int64)
        table[cell_pos[used]] = np.flatnonzero(used)
        return table

    def _room(self, s: int, n_new: int) -> LlamaContext:
        """Segment s's context, grown first (doubling, its cache copied over) when `n_new` more entries would not
        fit: the later segments start small and grow to what they hold, so allocated memory follows the pruning."""
        ctx = self.contexts[s]
        need = ctx.n_tokens + n_new
        if need > ctx.n_ctx and ctx.n_ctx < self.max_cells:
            size = min(self.max_cells, max(2 * ctx.n_ctx, -(-need // GROW_STEP) * GROW_STEP))
            self.contexts[s] = ctx.with_capacity(size)
            ctx.close()
        return self.contexts[s]

    # -- decoding ---------------------------------------------------------------------------------

    def extend(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Run text tokens through every segment (nothing is pruned) and return the last logits."""
        tokens = np.asarray(tokens, dtype=np.int32)
        if tokens.ndim != 1 or tokens.size == 0:
            raise InputError("extend needs a non-empty 1-D list of token ids")
        return self._atomic(lambda: self._extend(tokens))

    def _extend(self, tokens: np.ndarray) -> np.ndarray:
        positions = np.arange(self.next_pos, self.next_pos + len(tokens), dtype=np.int32)
        prev = self._room(0, len(tokens))
        prev.decode_tokens(tokens, positions)
        for s in range(1, len(self.contexts)):
            ctx = self._room(s, len(tokens))
            ctx.decode_embd(prev.hidden_all(), positions)
            prev = ctx
        self.next_pos += len(tokens)
        return self.contexts[-1].logits()

    def generate(self, logits: np.ndarray, sampler: Sampler, max_tokens: int) -> Iterator[int]:
        """Sample from `logits`, feed the token back, repeat; stops at end-of-generation or max_tokens.

        The end-of-generation token is not fed; it is left in `stop_token` (None when max_tokens ended it)."""
        self.stop_token = None
        self.generated = []
        for _ in range(max_tokens):
            token = sampler.sample(logits)
            if self.model.is_eog(token):
                self.stop_token = token
                return
            yield token
            logits = self.extend([token])
            self.generated.append(token)

    # -- accounting -------------------------------------------------------------------------------

    def kv_stats(self) -> list[KvStats]:
        return [ctx.kv_stats() for ctx in self.contexts]

    def kv_used_bytes(self) -> int:
        return sum(s.used_bytes for s in self.kv_stats())

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()
        self.contexts = []
