"""The segment runtime against a stock context and against an independent numpy forward."""

from __future__ import annotations

import numpy as np
import pytest
from llama_cpp import llama_cpp as llama

from atp_cli.driver import SegmentedDecoder
from atp_cli.pruning.base import ModuleInput
from atp_cli.prompt_input import Prompt, Span
from atp_cli.runtime.context import ContextConfig, LlamaContext
from atp_cli.sampling import Sampler
from tests.conftest import TINY
from tests.reference_llama import forward

F32 = ContextConfig(n_ctx=256, n_batch=64, n_ubatch=64, type_k="f32", type_v="f32")
N_VIS = 16  # a 4 x 4 image


def make_prompt(seed: int = 0) -> Prompt:
    rng = np.random.default_rng(seed)
    before = rng.integers(3, TINY.n_vocab, 5)
    image = rng.standard_normal((N_VIS, TINY.n_embd)).astype(np.float32)
    after = rng.integers(3, TINY.n_vocab, 6)
    return Prompt((Span.text(before), Span.image(image), Span.text(after)))


def entry_embeddings(prompt: Prompt, weights) -> np.ndarray:
    rows = [weights["token_embd.weight"][s.tokens] if not s.is_visual else s.embd for s in prompt.spans]
    return np.concatenate(rows, axis=0)


class DropFixed:
    """A keep function that drops chosen raster indices at chosen boundaries and records what it saw."""

    def __init__(self, drops: dict[int, list[int]]) -> None:
        self.drops, self.seen = drops, []

    def __call__(self, view: ModuleInput) -> np.ndarray:
        self.seen.append(view)
        dropped = view.visual_origin + np.array(self.drops.get(view.boundary, []), dtype=np.int64)
        return view.visual_pos[~np.isin(view.visual_pos, dropped)]


def greedy_run(dec: SegmentedDecoder, prompt: Prompt, keep=None, steps: int = 20):
    logits = [dec.prefill(prompt, keep)]
    tokens = []
    for _ in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        logits.append(dec.extend([tokens[-1]]))
    return np.stack(logits), tokens


@pytest.mark.parametrize("boundaries", [[2], [1, 3], [1, 2, 3]])
def test_unpruned_segments_match_stock_context(tiny_model, boundaries):
    prompt = make_prompt()
    cfg = ContextConfig(n_ctx=256, n_batch=64, n_ubatch=64)  # default f16 KV and flash attention, as stock
    with SegmentedDecoder(tiny_model, (), cfg, readout=False, stock=True) as stock:
        ref, ref_tokens = greedy_run(stock, prompt)
    with SegmentedDecoder(tiny_model, boundaries, cfg, readout=False) as dec:
        got, tokens = greedy_run(dec, prompt)
    assert tokens == ref_tokens
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "boundaries,drops",
    [
        ([2], {2: [0, 1, 5, 6, 7, 10, 15]}),
        ([1, 3], {1: [3, 4, 9], 3: [0, 2, 8, 12, 13]}),
    ],
)
def test_pruned_segments_match_masked_reference(tiny_model, tiny_weights, boundaries, drops):
    prompt = make_prompt(1)
    keep = DropFixed(drops)
    with SegmentedDecoder(tiny_model, boundaries, F32) as dec:
        got, tokens = greedy_run(dec, prompt, keep, steps=10)
        alive = dec.stats.visual_alive_per_layer

    n = len(prompt)
    origin = prompt.visual_origin()
    present = np.ones((TINY.n_layer, n), bool)
    for b in sorted(drops):
        present[b:, [origin + r for r in drops[b]]] = False
    assert alive.tolist() == present[:, prompt.visual_mask()].sum(1).tolist()

    inputs = entry_embeddings(prompt, tiny_weights)
    pos = prompt.all_positions()
    for step in range(len(tokens) + 1):
        ref, _ = forward(tiny_weights, TINY, inputs, pos, present)
        assert np.abs(got[step] - ref).max() <= 1e-3, f"step {step}"
        if step < len(tokens):
            assert tokens[step] == int(np.argmax(ref))
            inputs = np.vstack([inputs, tiny_weights["token_embd.weight"][tokens[step]]])
            pos = np.append(pos, pos[-1] + 1)
            present = np.hstack([present, np.ones((TINY.n_layer, 1), bool)])


def test_dropped_tokens_still_matter_before_the_boundary(tiny_model):
    """Dropping at boundary 3 must differ from dropping the same tokens at boundary 1."""
    prompt = make_prompt(2)
    outs = []
    for b in (1, 3):
        with SegmentedDecoder(tiny_model, [b], F32) as dec:
            outs.append(dec.prefill(prompt, DropFixed({b: list(range(8))})))
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


def test_module_sees_reference_attention(tiny_model, tiny_weights):
    prompt = make_prompt(3)
    keep = DropFixed({2: [4, 5]})
    with SegmentedDecoder(tiny_model, [2, 3], F32) as dec:
        dec.prefill(prompt, keep)
    view2, view3 = keep.seen
    mask = prompt.visual_mask()
    _, attn = forward(tiny_weights, TINY, entry_embeddings(prompt, tiny_weights), prompt.all_positions())
    a1 = attn[1]  # layer before boundary 2, all tokens present
    vis = np.flatnonzero(mask)
    query = np.flatnonzero(~mask & (np.arange(len(prompt)) > vis[-1]))
    np.testing.assert_allclose(view2.attn_vv, a1[np.ix_(vis, vis)], atol=1e-5)
    np.testing.assert_allclose(view2.attn_tv, a1[np.ix_(query, vis)], atol=1e-5)
    assert view2.layer == 1 and view3.layer == 2
    assert view3.visual_pos.tolist() == [p for p in prompt.all_positions()[mask] if p - view3.visual_origin not in (4, 5)]
    assert view3.attn_vv.shape == (N_VIS - 2, N_VIS - 2)


def test_capture_across_ubatches_matches_single_ubatch(tiny_model):
    prompt = make_prompt(4)
    views = []
    for n_ubatch in (64, 7):
        keep = DropFixed({})
        cfg = ContextConfig(n_ctx=256, n_batch=64, n_ubatch=n_ubatch, type_k="f32", type_v="f32")
        with SegmentedDecoder(tiny_model, [2], cfg) as dec:
            dec.prefill(prompt, keep)
        views.append(keep.seen[0])
    np.testing.assert_allclose(views[0].attn_vv, views[1].attn_vv, atol=1e-6)
    np.testing.assert_allclose(views[0].attn_tv, views[1].attn_tv, atol=1e-6)


def test_kv_bytes_follow_alive_tokens(tiny_model):
    prompt = make_prompt(5)
    drops = {1: [0, 1, 2, 3], 3: [4, 5, 6, 7, 8, 9]}
    with SegmentedDecoder(tiny_model, [1, 3], F32) as dec:
        logits = dec.prefill(prompt, DropFixed(drops))
        for tok in Sampler().sample(logits), 7, 9:
            dec.extend([tok])
        stats = dec.kv_stats()
    n_text = len(prompt) - N_VIS + 3
    alive = [n_text + N_VIS, n_text + N_VIS - 4, n_text + N_VIS - 10]
    per_cell_layer = 2 * TINY.n_head_kv * TINY.head_dim * 4  # K + V, float32
    for st, n_alive, (b, e) in zip(stats, alive, dec.ranges):
        assert st.used_cells == n_alive
        assert st.n_layers == e - b
        assert st.total_bytes == st.total_cells * (e - b) * per_cell_layer
        assert st.used_bytes == n_alive * (e - b) * per_cell_layer


def test_stock_context_keeps_stock_rules(tiny_model, tiny_weights):
    """A context made by llama_init_from_model still rejects position gaps and runs every layer."""
    tokens = np.array([5, 6, 7, 8], dtype=np.int32)
    with LlamaContext(tiny_model, F32, stock=True) as ctx:
        ctx.decode_tokens(tokens, np.arange(4))
        ref, _ = forward(tiny_weights, TINY, tiny_weights["token_embd.weight"][tokens], np.arange(4))
        assert np.abs(ctx.logits() - ref).max() <= 1e-3
        assert ctx.kv_stats().total_bytes == ctx.kv_stats().total_cells * TINY.n_layer * 2 * 32 * 4
        batch = llama.llama_batch_init(1, 0, 1)
        try:
            batch.n_tokens = 1
            batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = 9, 10, 1, 1
            batch.seq_id[0][0] = 0
            assert llama.llama_decode(ctx.ptr, batch) != 0  # gap 3 -> 10: refused, as before the patch
        finally:
            llama.llama_batch_free(batch)


def test_stock_high_level_api_still_works(tiny_gguf, tiny_model, tiny_weights):
    from llama_cpp import Llama

    llm = Llama(str(tiny_gguf), n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval([5, 6, 7])
        ref, _ = forward(tiny_weights, TINY, tiny_weights["token_embd.weight"][[5, 6, 7]], np.arange(3))
        got = np.array(llm.scores[llm.n_tokens - 1])
        assert np.abs(got - ref).max() <= 2e-2  # f16 KV cache
        assert int(np.argmax(got)) == int(np.argmax(ref))
    finally:
        llm.close()


def test_later_segments_grow_to_what_they_hold(tiny_model):
    """Segments after the first start at one 256-cell step and grow (their cache copied into a bigger context) when a
    prefill or the decoded tokens need more: allocated memory follows the pruning, and the numbers do not change."""
    from atp_cli.driver import GROW_STEP

    cfg = ContextConfig(n_ctx=1024, n_batch=64, n_ubatch=64)
    rng = np.random.default_rng(3)
    image = rng.standard_normal((300, TINY.n_embd)).astype(np.float32)
    prompt = Prompt((Span.text(rng.integers(3, TINY.n_vocab, 5)), Span.image(image),
                     Span.text(rng.integers(3, TINY.n_vocab, 6))))
    drops = {1: list(range(0, 300, 2)), 3: list(range(1, 300, 4))}  # 150 of 300 left after layer 1, 75 after 3
    with SegmentedDecoder(tiny_model, [1, 3], cfg) as full:
        full.max_cells = 0  # never grow: every context already holds n_ctx
        for i in range(1, len(full.contexts)):
            full.contexts[i] = full.contexts[i].with_capacity(1024)
        ref_logits = full.prefill(prompt, DropFixed(drops))
        ref = [int(np.argmax(ref_logits))]
        for _ in range(300):
            ref.append(int(np.argmax(full.extend([ref[-1]]))))
    with SegmentedDecoder(tiny_model, [1, 3], cfg) as dec:
        assert [c.n_ctx for c in dec.contexts] == [1024, GROW_STEP, GROW_STEP]
        logits = dec.prefill(prompt, DropFixed(drops))
        assert [c.n_ctx for c in dec.contexts] == [1024, GROW_STEP, GROW_STEP]  # 161 and 86 entries fit
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
        got = [int(np.argmax(logits))]
        for _ in range(300):
            got.append(int(np.argmax(dec.extend([got[-1]]))))
        assert got == ref
        assert [c.n_ctx for c in dec.contexts] == [1024, 2 * GROW_STEP, 2 * GROW_STEP]  # 461 and 386 entries now
        allocated = sum(s.total_bytes for s in dec.kv_stats())
        dec.truncate(100)  # a grown context rolls back like any other
        assert all(c.n_tokens <= 100 for c in dec.contexts)
    with SegmentedDecoder(tiny_model, (), cfg, readout=False, stock=True) as stock:
        assert allocated < sum(s.total_bytes for s in stock.kv_stats())
