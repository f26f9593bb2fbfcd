"""mmproj files that would make llama.cpp's clip loader assert are refused before libmtmd opens them; an attach
of ATP weights that do not fit the model leaves the file in place byte for byte."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import numpy as np  # noqa: E402

from atp_cli.errors import ModelError  # noqa: E402
from atp_cli.pipeline import Pipeline  # noqa: E402
from atp_cli.pruning.atp import ThresholdMLP  # noqa: E402
from atp_cli.pruning.config import AtpConfig  # noqa: E402
from atp_cli.pruning.schema import SchemaError  # noqa: E402
from atp_cli.pruning.store import AtpWeights, read_atp  # noqa: E402
from atp_cli.runtime.mmproj_check import check_mmproj  # noqa: E402
from converters.convert import attach, find_pair  # noqa: E402
from tests.gguf_edit import DROP, rewrite_gguf  # noqa: E402
from tests.test_pipeline import CFG, folder  # noqa: E402,F401

BROKEN = [
    ({"clip.vision.attention.head_count": 5}, {}, "head_count = 5 does not divide clip.vision.embedding_length"),
    ({"clip.vision.attention.head_count": 0}, {}, "head_count = 0; expected an integer in [1,"),
    ({"clip.vision.image_size": 30}, {}, "image_size = 30 is not a multiple of clip.vision.patch_size = 4"),
    ({"clip.vision.patch_size": "4"}, {}, "patch_size is stored as STRING; llama.cpp reads it as UINT32"),
    ({"clip.vision.block_count": 9}, {}, "tensor v.blk.2.attn_q.weight is missing"),
    ({"clip.vision.image_std": [0.5, 0.0, 0.5]}, {}, "image_std = [0.5, 0.0, 0.5]; expected 3 finite numbers > 0"),
    ({"clip.vision.image_mean": [0.5, 0.5]}, {}, "image_mean = [0.5, 0.5]; expected 3 finite numbers"),
    ({"clip.vision.embedding_length": DROP}, {}, "embedding_length is missing"),
    ({"clip.has_vision_encoder": DROP}, {}, "has no vision encoder"),
    ({}, {"v.blk.0.attn_k.weight": DROP}, "tensor v.blk.0.attn_k.weight is missing"),
    ({}, {"v.blk.0.attn_k.weight": np.zeros((16, 32), np.float32)}, "attn_k.weight has shape [16, 32]"),
    ({}, {"mm.2.weight": np.zeros((32, 7), np.float32)}, "do not chain"),
]


@pytest.mark.parametrize("keys,tensors,message", BROKEN, ids=[m[:30] for _, _, m in BROKEN])
def test_a_broken_mmproj_is_refused_before_mtmd(folder, tmp_path, keys, tensors, message):  # noqa: F811
    model, mmproj = find_pair(folder)
    bad = rewrite_gguf(mmproj, tmp_path / "mmproj-bad.gguf", keys, tensors)
    with pytest.raises(ModelError) as e:
        check_mmproj(bad)
    assert message in str(e.value)
    with pytest.raises(ModelError):  # the Pipeline checks before llama.cpp's loader would assert
        Pipeline(model, bad, "none", CFG)


def test_the_good_mmproj_passes(folder):  # noqa: F811
    model, mmproj = find_pair(folder)
    info = check_mmproj(mmproj, 64)
    assert info.n_tokens == 64 and info.out_dim == 64
    with pytest.raises(ModelError, match="the language model takes 48"):
        check_mmproj(mmproj, 48)


def _weights(grid, n_layer=4) -> AtpWeights:
    mlps = (ThresholdMLP.constant(1.0, 0.5, hidden=4),) * 2
    return AtpWeights(AtpConfig(n_layer, (1, 3), grid=grid, hidden=4), mlps)


def test_attach_refuses_weights_for_another_grid_or_depth_and_keeps_the_file(folder):  # noqa: F811
    _, mmproj = find_pair(folder)
    attach(folder, _weights((8, 8)))
    before = mmproj.read_bytes()
    with pytest.raises(SchemaError, match=r"atp.grid = \[4, 4\] holds 16 tokens; the vision projector gives 64"):
        attach(folder, _weights((4, 4)))
    with pytest.raises(SchemaError, match="atp.n_layer = 6; the language model has 4 layers"):
        attach(folder, _weights((8, 8), n_layer=6))
    assert mmproj.read_bytes() == before
    assert read_atp(mmproj).config.grid == (8, 8)
    with Pipeline.from_dir(folder, "atp", CFG) as pipe:  # the weights in place still work
        assert pipe.strategy.name == "atp"


def test_broken_weights_in_place_leave_the_other_strategies_working(folder, tmp_path):  # noqa: F811
    model, mmproj = find_pair(folder)
    bad = rewrite_gguf(mmproj, tmp_path / "mmproj-badatp.gguf", {"atp.temperature": float("nan")})
    with Pipeline(model, bad, "none", CFG) as pipe:
        assert pipe.weights is None
        with pytest.raises(SchemaError, match="atp.temperature = nan"):
            pipe.set_strategy("atp")
        pipe.set_strategy("fastv")


def test_attach_into_a_truncated_mmproj_or_a_foreign_model_is_refused(folder, tmp_path):  # noqa: F811
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    model, mmproj = find_pair(broken)
    good = mmproj.read_bytes()
    mmproj.write_bytes(good[:300])
    with pytest.raises(ModelError, match="cannot read"):
        attach(broken, _weights((8, 8)))
    mmproj.write_bytes(good)
    model.write_bytes(b"not a gguf")
    with pytest.raises(ModelError, match="cannot read .* as a GGUF language model"):
        attach(broken, _weights((8, 8)))


def test_a_full_disk_during_attach_keeps_the_file_in_place(folder, monkeypatch):  # noqa: F811
    import errno
    import os

    from atp_cli.errors import InputError

    _, mmproj = find_pair(folder)
    before = mmproj.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(InputError, match="No space left on device"):
        attach(folder, _weights((8, 8)))
    monkeypatch.undo()
    assert mmproj.read_bytes() == before
    assert not list(mmproj.parent.glob("*.part"))


def test_a_prompt_over_a_rounded_context_names_both_sizes(folder):  # noqa: F811
    from atp_cli.errors import InputError
    from atp_cli.pipeline import PipelineConfig
    from atp_cli.runtime.context import ContextConfig
    from tests.test_pipeline import images

    cfg = PipelineConfig(context=ContextConfig(n_ctx=100, n_batch=64, n_ubatch=64), max_tokens=250)
    with Pipeline.from_dir(folder, "none", cfg) as pipe:
        with pytest.raises(InputError, match=r"does not fit the context of 256 tokens \(n_ctx 100, which llama.cpp"):
            pipe(images(1)[0], "what is in the picture")
