"""Owner of one llama.cpp context: a whole decoder (stock) or a layer-range segment (patched).

Everything a caller passes is validated here, before it reaches C: llama.cpp answers bad input with an
assert that kills the process, so positions, shapes, ids and capacity are checked in Python first.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace

import numpy as np
from llama_cpp import llama_cpp as llama

from atp_cli.cpu import usable_cores
from atp_cli.errors import DecodeError, InputError
from atp_cli.runtime.log import raise_pending_interrupt
from atp_cli.runtime.model import LlamaModel
from atp_cli.runtime.native import SegmentParams, atp_lib
from atp_cli.runtime.owner import Closeable

_KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}  # enum ggml_type
_FLASH_ATTN = {None: -1, False: 0, True: 1}  # enum llama_flash_attn_type: auto, disabled, enabled


@dataclass(frozen=True)
class ContextConfig:
    """Runtime knobs shared by every context of a decoder."""

    n_ctx: int = 2048
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 0  # 0: every core this process may use
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool | None = None  # None: llama.cpp decides (on, on CPU)

    def threads(self) -> int:
        return self.n_threads or usable_cores()

    def sized(self, n_ctx: int) -> "ContextConfig":
        """The same knobs for a context of `n_ctx` cells (llama.cpp caps a batch at the context size)."""
        return replace(self, n_ctx=n_ctx, n_batch=min(self.n_batch, n_ctx), n_ubatch=min(self.n_ubatch, n_ctx))

    def validate(self) -> None:
        if self.n_ctx < 16 or self.n_batch < 1 or self.n_ubatch < 1:
            raise InputError(f"n_ctx >= 16, n_batch >= 1 and n_ubatch >= 1 needed, got {self}")
        for name in (self.type_k, self.type_v):
            if name not in _KV_TYPES:
                raise InputError(f"KV cache type {name!r} is not one of {sorted(_KV_TYPES)}")

    def llama_params(self) -> llama.llama_context_params:
        self.validate()
        p = llama.llama_context_default_params()
        p.n_ctx = self.n_ctx
        p.n_batch = self.n_batch
        p.n_ubatch = min(self.n_ubatch, self.n_batch)
        p.n_seq_max = 1
        p.n_threads = p.n_threads_batch = self.threads()
        p.type_k = _KV_TYPES[self.type_k]
        p.type_v = _KV_TYPES[self.type_v]
        p.flash_attn_type = _FLASH_ATTN[self.flash_attn]
        p.embeddings = False
        p.no_perf = True
        return p


@dataclass(frozen=True)
class KvStats:
    """KV cache accounting of one context."""

    used_cells: int
    total_cells: int
    total_bytes: int
    n_layers: int

    @property
    def bytes_per_cell(self) -> float:
        return self.total_bytes / self.total_cells if self.total_cells else 0.0

    @property
    def used_bytes(self) -> int:
        return int(round(self.used_cells * self.bytes_per_cell))


class _Batch:
    """A llama_batch of fixed capacity, one sequence, token ids or embedding rows."""

    def __init__(self, capacity: int, n_embd: int) -> None:
        self.capacity, self.n_embd = capacity, n_embd
        self.raw = llama.llama_batch_init(capacity, n_embd, 1)
        self.pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        n_seq = np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))
        n_seq[:] = 1
        for i in range(capacity):
            self.raw.seq_id[i][0] = 0
        if n_embd:
            self.values = np.ctypeslib.as_array(self.raw.embd, shape=(capacity, n_embd))
        else:
            self.values = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))

    def fill(self, values: np.ndarray, positions: np.ndarray, want_last: bool) -> None:
        n = len(positions)
        self.values[:n] = values
        self.pos[:n] = positions
        self.logits[:n] = 0
        if want_last:
            self.logits[n - 1] = 1
        self.raw.n_tokens = n

    def free(self) -> None:
        if self.raw is not None:
            llama.llama_batch_free(self.raw)
            self.raw = None


class LlamaContext(Closeable):
    """One context over `model`: layers [il_begin, il_end), or the stock whole decoder if `stock`.

    Positions are tracked here (llama.cpp asserts on out-of-order input): every decode must continue
    after the last position already in the cache, strictly increasing; gaps only in segment contexts.
    """

    def __init__(
        self,
        model: LlamaModel,
        config: ContextConfig,
        il_begin: int = 0,
        il_end: int | None = None,
        readout_layer: int | None = None,
        stock: bool = False,
    ) -> None:
        self.model, self.config = model, config
        self.il_begin = il_begin
        self.il_end = model.n_layer if il_end is None else il_end
        self.stock = stock
        self.readout_layer = readout_layer
        self.ptr = None
        self._validate_range()
        params = config.llama_params()
        if stock:
            ptr = llama.llama_init_from_model(model.ptr, params)
        else:
            seg = SegmentParams(self.il_begin, self.il_end, True, -1 if readout_layer is None else readout_layer)
            ptr = atp_lib().init_segment(model.ptr, params, seg)
        if not ptr:
            raise_pending_interrupt()
            raise InputError(f"llama.cpp refused a context for layers [{self.il_begin}, {self.il_end}) (see log)")
        self.ptr = ptr
        self.n_ctx = int(llama.llama_n_ctx(ptr))
        self._tok_batch = _Batch(config.n_batch, 0)
        self._emb_batch = _Batch(config.n_batch, model.n_embd)
        self.pos_max = -1  # last position in the cache
        self.n_tokens = 0  # tokens in the cache
        self._last_n = 0  # tokens of the last decode call
        self._pending_hidden: list[np.ndarray] = []  # earlier n_batch chunks of the last decode call

    def _validate_range(self) -> None:
        n = self.model.n_layer
        if self.stock:
            if (self.il_begin, self.il_end) != (0, n) or self.readout_layer is not None:
                raise InputError("a stock context runs all layers and has no attention readout")
            return
        if not atp_lib().model_supported(self.model.ptr):
            raise InputError(
                f"model architecture {self.model.arch!r} is not supported by the segment runtime (supported: llama)"
            )
        if not 0 <= self.il_begin < self.il_end <= n:
            raise InputError(f"layer range [{self.il_begin}, {self.il_end}) is not inside [0, {n}]")
        if self.readout_layer is not None and not self.il_begin <= self.readout_layer < self.il_end:
            raise InputError(f"readout layer {self.readout_layer} is outside [{self.il_begin}, {self.il_end})")
        if self.readout_layer is not None and self.config.type_v not in ("f32", "f16", "bf16"):
            raise InputError("attention readout needs an unquantized V cache")

    @property
    def outputs_logits(self) -> bool:
        return self.il_end == self.model.n_layer

    # -- decoding ---------------------------------------------------------------------------------

    def _check_positions(self, positions: np.ndarray) -> None:
        if positions.ndim != 1 or positions.size == 0:
            raise InputError("positions must be a non-empty 1-D array")
        steps = np.diff(positions)
        if positions[0] <= self.pos_max or (steps.size and steps.min() <= 0):
            raise InputError(
                f"positions must strictly increase after the last cached position {self.pos_max}, "
                f"got {positions[:8].tolist()}..."
            )
        if self.stock and (positions[0] != self.pos_max + 1 or (steps.size and steps.max() != 1)):
            raise InputError("a stock context needs consecutive positions")
        if self.n_tokens + positions.size > self.n_ctx:
            raise InputError(f"context full: {self.n_tokens} + {positions.size} tokens > n_ctx {self.n_ctx}")

    def decode_tokens(self, tokens: np.ndarray, positions: np.ndarray, want_last: bool = True) -> None:
        """Run token ids (only valid for a context that starts at layer 0)."""
        tokens = np.asarray(tokens, dtype=np.int32)
        positions = np.asarray(positions, dtype=np.int32)
        if self.il_begin != 0:
            raise InputError(f"token ids can only enter at layer 0, this context starts at {self.il_begin}")
        if tokens.shape != positions.shape:
            raise InputError(f"{tokens.shape[0]} tokens but {positions.shape[0]} positions")
        self.model.check_tokens(tokens)
        self._run(self._tok_batch, tokens, positions, want_last)

    def decode_embd(self, embd: np.ndarray, positions: np.ndarray, want_last: bool = True) -> None:
        """Run embedding rows: image embeddings at layer 0, hidden states at later layers."""
        embd = np.asarray(embd, dtype=np.float32)
        positions = np.asarray(positions, dtype=np.int32)
        if embd.ndim != 2 or embd.shape[1] != self.model.n_embd or embd.shape[0] != positions.shape[0]:
            raise InputError(f"embeddings must be ({positions.shape[0]}, {self.model.n_embd}), got {embd.shape}")
        if not np.isfinite(embd).all():
            raise InputError("embeddings contain NaN or inf")
        self._run(self._emb_batch, embd, positions, want_last)

    def _run(self, batch: _Batch, values: np.ndarray, positions: np.ndarray, want_last: bool) -> None:
        self._check_positions(positions)
        hidden = []
        n = len(positions)
        for start in range(0, n, batch.capacity):
            stop = min(n, start + batch.capacity)
            batch.fill(values[start:stop], positions[start:stop], want_last and stop == n and self.outputs_logits)
            rc = llama.llama_decode(self.ptr, batch.raw)
            raise_pending_interrupt()  # after the bookkeeping below would be too late: the caller truncates
            if rc != 0:
                raise DecodeError(f"llama_decode returned {rc} for layers [{self.il_begin}, {self.il_end})")
            self.pos_max = int(positions[stop - 1])
            self.n_tokens += stop - start
            self._last_n = stop - start
            if not self.outputs_logits and stop < n:
                hidden.append(self.hidden())
        self._pending_hidden = hidden

    def hidden(self) -> np.ndarray:
        """Hidden states leaving this segment for the tokens of the last decode call: (n, n_embd) copy."""
        ptr = atp_lib().get_hidden(self.ptr)
        if not ptr:
            raise InputError("this context has no hidden-state output (it runs to the logits) or decoded nothing")
        return np.ctypeslib.as_array(ptr, shape=(self._last_n, self.model.n_embd)).copy()

    def hidden_all(self) -> np.ndarray:
        """Hidden states of every token of the last `decode_*` call, across its n_batch chunks."""
        if not self._pending_hidden:  # one chunk (every decode step): no second copy
            return self.hidden()
        return np.concatenate([*self._pending_hidden, self.hidden()], axis=0)

    def logits(self) -> np.ndarray:
        """Logits of the last token of the last decode call (copy)."""
        if not self.outputs_logits:
            raise InputError("only the last segment outputs logits")
        ptr = llama.llama_get_logits_ith(self.ptr, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    # -- attention readout ------------------------------------------------------------------------

    def arm_capture(self, armed: bool) -> None:
        if self.readout_layer is None or not atp_lib().attn_capture(self.ptr, armed):
            raise InputError("this context has no attention readout layer")

    def captured_attention(self) -> np.ndarray:
        """(rows, n_cells): head-mean attention rows captured since arming, one per decoded token."""
        lib = atp_lib()
        rows, cols = lib.attn_rows(self.ptr), lib.attn_cols(self.ptr)
        if rows == 0:
            return np.zeros((0, cols), dtype=np.float32)
        return np.ctypeslib.as_array(lib.attn_data(self.ptr), shape=(rows, cols)).copy()

    def cell_positions(self) -> np.ndarray:
        """Position held by each KV cell (-1 where empty)."""
        lib = atp_lib()
        n = lib.kv_cell_pos(self.ptr, 0, None, 0)
        out = (ctypes.c_int32 * max(n, 1))()
        lib.kv_cell_pos(self.ptr, 0, out, n)
        return np.ctypeslib.as_array(out)[:n].copy()

    # -- memory -----------------------------------------------------------------------------------

    def kv_stats(self) -> KvStats:
        used, total, nbytes = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_uint64()
        if not atp_lib().kv_stats(self.ptr, ctypes.byref(used), ctypes.byref(total), ctypes.byref(nbytes)):
            raise InputError("context has no KV cache")
        return KvStats(used.value, total.value, nbytes.value, self.il_end - self.il_begin)

    def remove(self, positions: np.ndarray) -> None:
        """Evict single positions from this context's KV cache (all of its layers)."""
        mem = llama.llama_get_memory(self.ptr)
        for p in np.asarray(positions, dtype=np.int64):
            llama.llama_memory_seq_rm(mem, 0, int(p), int(p) + 1)
        self.n_tokens = int(self.kv_stats().used_cells)

    def clear(self) -> None:
        llama.llama_memory_clear(llama.llama_get_memory(self.ptr), True)
        self.pos_max, self.n_tokens, self._last_n = -1, 0, 0
        self._pending_hidden = []

    def truncate(self, pos: int) -> None:
        """Forget every cached position >= `pos` and re-read what is left from llama.cpp itself.

        This is how an interrupted or failed call is undone: whatever part of it reached the cache is removed, and
        the Python record of the cache (last position, token count) is taken from the cache, never assumed."""
        if pos <= 0:
            self.clear()
        else:
            mem = llama.llama_get_memory(self.ptr)
            if not llama.llama_memory_seq_rm(mem, 0, int(pos), -1):
                raise DecodeError(f"llama.cpp could not remove positions >= {pos} from layers "
                                  f"[{self.il_begin}, {self.il_end})")
            self.pos_max = int(llama.llama_memory_seq_pos_max(mem, 0))
            self.n_tokens = int(self.kv_stats().used_cells)
            self._last_n, self._pending_hidden = 0, []
        if self.readout_layer is not None:
            self.arm_capture(False)

    # -- capacity ---------------------------------------------------------------------------------

    def with_capacity(self, n_ctx: int) -> "LlamaContext":
        """A context like this one holding `n_ctx` cells, with this one's cache copied in (llama.cpp's own sequence
        state); the caller closes this one. How a segment's cache grows to what it must hold."""
        grown = LlamaContext(self.model, self.config.sized(n_ctx), self.il_begin, self.il_end, self.readout_layer,
                             self.stock)
        try:
            grown.load_state(self.state(), self.pos_max, self.n_tokens)
            return grown
        except BaseException:
            grown.close()
            raise

    def state(self) -> bytes:
        """This context's cache as llama.cpp's sequence state (what `load_state` puts back, here or elsewhere)."""
        size = llama.llama_state_seq_get_size(self.ptr, 0)
        buf = (ctypes.c_uint8 * size)()
        if llama.llama_state_seq_get_data(self.ptr, buf, size, 0) != size:
            raise DecodeError(f"llama.cpp could not read the cache of layers [{self.il_begin}, {self.il_end})")
        return bytes(buf)

    def load_state(self, state: bytes, pos_max: int, n_tokens: int) -> None:
        """Replace the cache by `state` (from a context over the same layers) that ends at `pos_max`."""
        self.clear()
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama.llama_state_seq_set_data(self.ptr, buf, len(state), 0) != len(state):
            self.clear()
            raise DecodeError(f"llama.cpp could not load a cache into layers [{self.il_begin}, {self.il_end})")
        self.pos_max, self.n_tokens = pos_max, n_tokens

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self.ptr:
            if self.stock:
                llama.llama_free(self.ptr)
            else:
                atp_lib().free(self.ptr)
            self.ptr = None
            self._tok_batch.free()
            self._emb_batch.free()
