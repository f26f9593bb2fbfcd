"""Bad input reaches a Python exception that names the problem, never a llama.cpp abort."""

from __future__ import annotations

import numpy as np
import pytest

from atp_cli.driver import SegmentedDecoder, segment_ranges
from atp_cli.pruning.base import check_keep
from atp_cli.errors import InputError, ModelError
from atp_cli.prompt_input import Prompt, Span
from atp_cli.runtime.context import ContextConfig, LlamaContext
from converters.random_llama import write_llama_gguf
from tests.conftest import TINY

CFG = ContextConfig(n_ctx=64, n_batch=32, n_ubatch=32)


@pytest.mark.parametrize("boundaries", [[0], [4], [5], [-1], [3, 2], [2, 2]])
def test_boundaries_out_of_range_or_unsorted(boundaries):
    with pytest.raises(InputError, match="boundaries"):
        segment_ranges(4, boundaries)


def test_segment_ranges_cover_all_layers():
    assert segment_ranges(4, [1, 3]) == [(0, 1), (1, 3), (3, 4)]
    assert segment_ranges(4, []) == [(0, 4)]


@pytest.mark.parametrize(
    "kept,match",
    [([], "empty"), ([12, 11], "ascending"), ([10, 10], "ascending"), ([10, 99], "not alive"), ([1.0], "integer")],
)
def test_bad_keep_sets(kept, match):
    alive = np.arange(10, 20)
    with pytest.raises(InputError, match=match):
        check_keep(np.array(kept), alive, boundary=2)


def test_keep_function_returning_empty_set_stops_prefill(tiny_model):
    prompt = Prompt((Span.text([5, 6]), Span.image(np.ones((4, TINY.n_embd), np.float32)), Span.text([7])))
    with SegmentedDecoder(tiny_model, [2], CFG) as dec:
        with pytest.raises(InputError, match="empty"):
            dec.prefill(prompt, lambda view: np.array([], dtype=np.int32))


@pytest.mark.parametrize("il_begin,il_end", [(0, 5), (2, 2), (3, 1), (-1, 2)])
def test_layer_range_out_of_bounds(tiny_model, il_begin, il_end):
    with pytest.raises(InputError, match="layer range"):
        LlamaContext(tiny_model, CFG, il_begin, il_end)


def test_readout_layer_outside_segment(tiny_model):
    with pytest.raises(InputError, match="readout"):
        LlamaContext(tiny_model, CFG, 0, 2, readout_layer=3)


def test_positions_out_of_order(tiny_model):
    with LlamaContext(tiny_model, CFG, 0, 2) as ctx:
        with pytest.raises(InputError, match="strictly increase"):
            ctx.decode_tokens([5, 6, 7], [0, 2, 1])
        ctx.decode_tokens([5, 6], [0, 4])  # gaps are fine in a segment
        with pytest.raises(InputError, match="strictly increase"):
            ctx.decode_tokens([5], [4])  # not after the cached position 4


def test_stock_context_rejects_gaps_before_c(tiny_model):
    with LlamaContext(tiny_model, CFG, stock=True) as ctx:
        with pytest.raises(InputError, match="consecutive"):
            ctx.decode_tokens([5, 6], [0, 2])


def test_bad_token_ids_and_shapes(tiny_model):
    with LlamaContext(tiny_model, CFG, 0, 2) as ctx:
        with pytest.raises(InputError, match="token ids"):
            ctx.decode_tokens([TINY.n_vocab], [0])
        with pytest.raises(InputError, match="embeddings must be"):
            ctx.decode_embd(np.zeros((2, TINY.n_embd + 1)), [0, 1])
        with pytest.raises(InputError, match="NaN"):
            ctx.decode_embd(np.full((1, TINY.n_embd), np.nan), [0])
    with LlamaContext(tiny_model, CFG, 2, 4) as ctx:
        with pytest.raises(InputError, match="layer 0"):
            ctx.decode_tokens([5], [0])


def test_context_overflow(tiny_model):
    with LlamaContext(tiny_model, CFG, 0, 4) as ctx:
        with pytest.raises(InputError, match="context full"):
            ctx.decode_tokens(np.full(ctx.n_ctx + 1, 5), np.arange(ctx.n_ctx + 1))


def test_unsupported_architecture(tmp_path):
    from atp_cli.runtime.model import LlamaModel

    path = write_llama_gguf(tmp_path / "xverse.gguf", TINY, arch="xverse")
    with LlamaModel(path) as model:
        assert model.arch == "xverse"
        with pytest.raises(InputError, match="xverse"):
            LlamaContext(model, CFG, 0, 2)


def test_missing_and_non_gguf_model_files(tmp_path):
    from atp_cli.runtime.model import LlamaModel

    with pytest.raises(ModelError, match="not found"):
        LlamaModel(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        LlamaModel(bad)


def test_prompt_validation():
    with pytest.raises(InputError):
        Span()
    with pytest.raises(InputError, match="empty"):
        Span.text([])
    img = Span.image(np.zeros((2, 4)))
    with pytest.raises(InputError, match="at most one image"):
        Prompt((img, img))
    with pytest.raises(InputError, match="strictly increasing"):
        Prompt((Span.text([1, 2]),), positions=np.array([3, 3]))
