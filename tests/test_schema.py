"""The atp.* schema and the mmproj checks: every broken value is refused with its key, the value seen and what was
expected; nothing broken is written; weights in place survive a refused attach."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

from atp_cli.errors import InputError, ModelError
from atp_cli.gguf_keys import Atp
from atp_cli.pruning.atp import ThresholdMLP
from atp_cli.pruning.config import N_FEATURES, AtpConfig
from atp_cli.pruning.schema import SchemaError
from atp_cli.pruning.store import AtpWeights, add_to_writer, read_atp
from tests.gguf_edit import DROP, rewrite_gguf

HIDDEN = 8


def weights(n_layer: int = 4, boundaries=(1, 3), grid=(8, 8), free: bool = True) -> AtpWeights:
    mlps = tuple(ThresholdMLP.constant(1.0, 0.5, hidden=HIDDEN) for _ in boundaries)
    return AtpWeights(AtpConfig(n_layer, tuple(boundaries), grid=grid, hidden=HIDDEN), mlps,
                      (0.6,) * len(boundaries) if free else (), (4,) * len(boundaries) if free else ())


@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "good.gguf"
    w = gguf.GGUFWriter(path, "clip")
    add_to_writer(w, weights())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_written_file_reads_back_equal(good):
    back = read_atp(good)
    assert back.config == weights().config and back.free_mass == pytest.approx((0.6, 0.6))
    assert all(np.array_equal(a.fc2_b, b.fc2_b) for a, b in zip(back.mlps, weights().mlps))


BROKEN_KEYS = [
    (Atp.FORMAT_VERSION, "1", "atp.format_version = '1'"),
    (Atp.FORMAT_VERSION, 2, "atp.format_version = 2"),
    (Atp.N_LAYER, DROP, "atp.n_layer is missing"),
    (Atp.N_LAYER, "four", "atp.n_layer = 'four'"),
    (Atp.BOUNDARIES, 3, "atp.boundaries = 3"),
    (Atp.BOUNDARIES, [1.5, 3.0], "atp.boundaries = [1.5, 3]"),
    (Atp.BOUNDARIES, [3, 1], "strictly increasing"),
    (Atp.BOUNDARIES, [1, 4], "strictly increasing"),
    (Atp.BOUNDARIES, [1], "do not belong to the 1 modules of atp.boundaries"),
    (Atp.SAP_STRIDES, [1], "atp.sap.strides = [1]"),
    (Atp.SAP_STRIDES, [2.5], "atp.sap.strides"),
    (Atp.SAP_LAMBDA, math.nan, "atp.sap.lambda = nan"),
    (Atp.SAP_LAMBDA, math.inf, "atp.sap.lambda = inf"),
    (Atp.TEMPERATURE, math.nan, "atp.temperature = nan"),
    (Atp.TEMPERATURE, 0.0, "atp.temperature = 0;"),
    (Atp.GRID, [-8, 8], "atp.grid = [-8, 8]"),
    (Atp.GRID, [8, 8, 1], "atp.grid = [8, 8, 1]"),
    (Atp.MLP_HIDDEN, 16, "expected [(16, 10)"),
    (Atp.MLP_FEATURES, 12, "atp.mlp.n_features = 12"),
    (Atp.HAS_MLP, 1, "atp.mlp.present = 1"),
    (Atp.FREE_MASS, [0.6], "one per module"),
    (Atp.FREE_MASS, [0.6, math.nan], "atp.free.mass = [0.6, nan]"),
    (Atp.FREE_MASS, [0.6, 1.5], "atp.free.mass = [0.6, 1.5]"),
    (Atp.FREE_STRIDE, [4, 1], "atp.free.stride = [4, 1]"),
]


@pytest.mark.parametrize("key,value,message", BROKEN_KEYS, ids=[f"{k}={v!r}" for k, v, _ in BROKEN_KEYS])
def test_every_broken_key_is_refused_by_name(good, tmp_path, key, value, message):
    bad = rewrite_gguf(good, tmp_path / "bad.gguf", keys={key: value})
    with pytest.raises(SchemaError) as e:
        read_atp(bad)
    assert message in str(e.value) and str(bad) in str(e.value)


BROKEN_TENSORS = [
    ("atp.m0.fc1.weight", np.full((HIDDEN, N_FEATURES), np.nan, np.float32), "atp.m0.fc1.weight holds NaN or inf"),
    ("atp.m1.fc2.bias", np.array([1e38, 0.0], np.float32), "atp.m1.fc2.bias holds |w| = 1e+38"),
    ("atp.m0.fc1.bias", np.zeros(HIDDEN + 1, np.float32), "tensor shapes"),
    ("atp.m1.fc2.weight", DROP, "atp.m1.fc2.weight is missing"),
    ("atp.m2.fc1.weight", np.zeros((HIDDEN, N_FEATURES), np.float32), "do not belong to the 2 modules"),
    ("atp.m0.fc2.bias", np.zeros(2, np.int32), "stored as I32; expected F32 or F16"),
]


@pytest.mark.parametrize("name,array,message", BROKEN_TENSORS, ids=[b[0] + "-" + b[2][:20] for b in BROKEN_TENSORS])
def test_every_broken_tensor_is_refused_by_name(good, tmp_path, name, array, message):
    bad = rewrite_gguf(good, tmp_path / "bad.gguf", tensors={name: array})
    with pytest.raises(SchemaError) as e:
        read_atp(bad)
    assert message in str(e.value)


def test_writing_refuses_what_reading_would(tmp_path):
    bad = AtpWeights(AtpConfig(4, (1, 3), temperature=math.nan, hidden=HIDDEN), weights().mlps)
    w = gguf.GGUFWriter(tmp_path / "x.gguf", "clip")
    with pytest.raises(SchemaError, match="atp.temperature = nan"):
        add_to_writer(w, bad)
    with pytest.raises(SchemaError, match="atp.n_layer = 4; the language model has 30 layers"):
        weights().validate(n_layer=30)
    with pytest.raises(SchemaError, match=r"atp.grid = \[8, 8\] holds 64 tokens; the vision projector gives 16"):
        weights().validate(n_visual=16)
    assert isinstance(SchemaError("x"), InputError)


def test_a_file_without_atp_keys_has_no_weights_but_stray_keys_are_refused(good, tmp_path):
    plain = gguf.GGUFWriter(tmp_path / "plain.gguf", "clip")
    plain.add_uint32("clip.vision.image_size", 32)
    plain.write_header_to_file()
    plain.write_kv_data_to_file()
    plain.write_tensors_to_file()
    plain.close()
    assert read_atp(tmp_path / "plain.gguf") is None
    stray = rewrite_gguf(good, tmp_path / "stray.gguf", keys={Atp.FORMAT_VERSION: DROP})
    with pytest.raises(SchemaError, match="without atp.format_version"):
        read_atp(stray)


def test_a_truncated_or_foreign_file_is_a_model_error(good, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelError, match="cannot read"):
        read_atp(cut)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelError, match="cannot read"):
        read_atp(other)
