"""`atp convert` as a user meets it: ATP weights, --attach, quantization, tokenizers, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from atp_cli.cli import cli  # noqa: E402
from atp_cli.errors import InputError, ModelError  # noqa: E402
from atp_cli.gguf_keys import Atp  # noqa: E402
from atp_cli.pruning.atp import ThresholdMLP  # noqa: E402
from atp_cli.pruning.config import N_FEATURES, AtpConfig  # noqa: E402
from atp_cli.pruning.store import AtpWeights, read_atp, save_safetensors  # noqa: E402
from atp_cli.runtime.model import LlamaModel  # noqa: E402
from atp_cli.runtime.vision import ImageEncoder  # noqa: E402
from converters.convert import ConvertOptions, convert, find_pair  # noqa: E402
from tests.tiny_llava import build_tiny_llava, smollm2_tokenizer  # noqa: E402

TEXT_LAYERS = 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "clip", "clip", text_layers=TEXT_LAYERS)


def atp_weights(n_layer: int = TEXT_LAYERS, seed: int = 0) -> AtpWeights:
    rng = np.random.default_rng(seed)
    cfg = AtpConfig(n_layer=n_layer, boundaries=(1, 3), grid=(4, 4), hidden=8)
    mlps = tuple(ThresholdMLP(rng.standard_normal((8, N_FEATURES)), rng.standard_normal(8),
                              rng.standard_normal((2, 8)), rng.standard_normal(2)) for _ in range(2))
    return AtpWeights(cfg, mlps, free_mass=(0.5, 0.4), free_stride=(4, 0))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], standalone_mode=False, catch_exceptions=True)


def assert_same_weights(a: AtpWeights, b: AtpWeights) -> None:
    assert a.config == b.config and a.free_mass == pytest.approx(b.free_mass) and a.free_stride == b.free_stride
    for ma, mb in zip(a.mlps, b.mlps):
        for x, y in zip((ma.fc1_w, ma.fc1_b, ma.fc2_w, ma.fc2_b), (mb.fc1_w, mb.fc1_b, mb.fc2_w, mb.fc2_b)):
            np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_convert_with_atp_weights_reads_back_and_stock_loader_accepts(ckpt, tmp_path):
    weights = atp_weights()
    wpath = tmp_path / "atp.safetensors"
    save_safetensors(weights, wpath)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    res = run("convert", ckpt, tmp_path / "out", "--outtype", "q8_0", "--atp", wpath)
    assert res.exit_code == 0, res.output
    assert "done in" in res.output and "q8_0" in res.output
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # input untouched
    model_path, mmproj_path = find_pair(tmp_path / "out")
    assert_same_weights(read_atp(mmproj_path), weights)
    reader = gguf.GGUFReader(mmproj_path)
    assert list(reader.fields[Atp.BOUNDARIES].contents()) == [1, 3]
    assert read_atp(model_path) is None  # the LLM file stays as llama.cpp expects it
    with LlamaModel(model_path) as model, ImageEncoder(mmproj_path, model) as enc:
        from PIL import Image

        assert enc.encode(Image.new("RGB", (16, 16), (200, 30, 30))).shape == (16, model.n_embd)


def test_attach_replaces_atp_weights(ckpt, tmp_path):
    out = tmp_path / "out"
    convert(ckpt, out, ConvertOptions(outtype="f16"))
    _, mmproj = find_pair(out)
    tensors_before = {t.name for t in gguf.GGUFReader(mmproj).tensors}
    for seed in (1, 2):
        w = atp_weights(seed=seed)
        save_safetensors(w, tmp_path / f"w{seed}.safetensors")
        res = run("convert", "--attach", out, "--atp", tmp_path / f"w{seed}.safetensors")
        assert res.exit_code == 0, res.output
        assert_same_weights(read_atp(mmproj), w)
    tensors_after = {t.name for t in gguf.GGUFReader(mmproj).tensors}
    assert tensors_after - tensors_before == {f"atp.m{m}.{p}" for m in (0, 1)
                                              for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}


def test_atp_weights_for_another_depth_are_refused(ckpt, tmp_path):
    save_safetensors(atp_weights(n_layer=32), tmp_path / "w.safetensors")
    res = run("convert", ckpt, tmp_path / "out", "--atp", tmp_path / "w.safetensors")
    assert isinstance(res.exception, InputError)
    assert "atp.n_layer = 32; the language model has 4 layers" in str(res.exception)
    assert not (tmp_path / "out").exists()


def test_k_quant_output(ckpt, tmp_path):
    summary = convert(ckpt, tmp_path / "out", ConvertOptions(outtype="q4_k_m"))
    model_path, _ = find_pair(tmp_path / "out")
    assert model_path.name == "model-q4_k_m.gguf" and summary.files[model_path.name] > 0
    with LlamaModel(model_path) as model:
        assert model.n_layer == TEXT_LAYERS


def test_existing_output_needs_force(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--force"):
        convert(ckpt, out, ConvertOptions(outtype="f16"))
    assert (out / "keep.txt").read_text() == "mine"
    convert(ckpt, out, ConvertOptions(outtype="f16", force=True))
    assert not (out / "keep.txt").exists() and len(find_pair(out)) == 2


def test_output_inside_input_is_refused(ckpt):
    with pytest.raises(InputError, match="inside"):
        convert(ckpt, ckpt / "out", ConvertOptions())


def test_full_disk_is_reported_before_writing(ckpt, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 0))
    with pytest.raises(InputError, match="disk space"):
        convert(ckpt, tmp_path / "out", ConvertOptions())
    assert not any(tmp_path.iterdir())


def test_missing_corrupt_and_mismatched_checkpoints(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json"):
        convert(bad, tmp_path / "o1", ConvertOptions())
    shutil.copy(ckpt / "config.json", bad / "config.json")
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot read weights"):
        convert(bad, tmp_path / "o2", ConvertOptions())
    shutil.copy(ckpt / "model.safetensors", bad / "model.safetensors")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 96  # the weights no longer have the shapes the config implies
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"has shape \[300, 64\]; its config implies \[300, 96\]"):
        convert(bad, tmp_path / "o3", ConvertOptions())
    cfg["vision_config"]["model_type"] = "vit"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="supported: .*clip_vision_model"):
        convert(bad, tmp_path / "o4", ConvertOptions())
    cfg = json.loads((ckpt / "config.json").read_text())
    for layers, message in (([2, 1], "ascending"), ([1, 9], "outside"), ("last", "integer or a list")):
        cfg["vision_feature_layer"] = layers  # llama.cpp concatenates several layers in ascending order only
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelError, match=message):
            convert(bad, tmp_path / "o6", ConvertOptions())
    with pytest.raises(InputError, match="not found"):
        convert(tmp_path / "nowhere", tmp_path / "o5", ConvertOptions())
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


def test_bpe_tokenizer_round_trip(tmp_path):
    """A SmolLM2-style BPE vocabulary: same ids in transformers and llama.cpp, chat template kept."""
    from transformers import AutoTokenizer

    tok_dir = smollm2_tokenizer(tmp_path / "tok")
    ck = build_tiny_llava(tmp_path / "bpe", "clip", bpe_from=tok_dir, text_layers=2)
    convert(ck, tmp_path / "out", ConvertOptions(outtype="f16"))
    model_path, _ = find_pair(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(ck)
    with LlamaModel(model_path) as model:
        assert model.meta("tokenizer.ggml.pre") == "smollm"
        for text in ["Hello world, how are you?", "<|im_start|>user\nWhat is in the image?<|im_end|>\n",
                     "  spaces\tand tabs 1234 ünïcode"]:
            assert model.tokenize(text).tolist() == tok(text, add_special_tokens=False)["input_ids"], text
        assert model.meta("tokenizer.chat_template") == tok.chat_template


def _edit_weights(src: Path, dst: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))


@pytest.mark.parametrize("case,message", [
    ("drop-lm", "checkpoint lacks tensor language_model.model.layers.1.mlp.up_proj.weight"),
    ("layers-too-few", "text_config.num_hidden_layers = 1, but the checkpoint holds language-model layers up to"),
    ("layers-too-many", "checkpoint lacks tensor language_model.model.layers.4"),
    ("nan-projector", "holds NaN or inf"),
    ("std-zero", "image_std = [0.5, 0, 0.5]; expected 3 finite numbers > 0"),
    ("patch-string", "vision_config.patch_size = '4'; expected a positive integer"),
    ("crop-string", "crop_size = 'big'"),
    ("shape", "has shape [48, 32]; its config implies [32, 32]"),
])
def test_a_checkpoint_that_would_convert_into_a_broken_model_is_refused_first(ckpt, tmp_path, case, message):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((ckpt / "config.json").read_text())
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    if case == "drop-lm":
        def drop(t):
            for k in [k for k in t if k.endswith("layers.1.mlp.up_proj.weight")]:
                del t[k]
        _edit_weights(ckpt, bad, drop)
    elif case == "layers-too-few":
        cfg["text_config"]["num_hidden_layers"] = 1
    elif case == "layers-too-many":
        cfg["text_config"]["num_hidden_layers"] = TEXT_LAYERS + 1
        message = message.replace("layers.4", f"layers.{TEXT_LAYERS}")
    elif case == "nan-projector":
        def nan(t):
            k = next(k for k in t if k.endswith("multi_modal_projector.linear_1.weight"))
            t[k] = t[k].copy()
            t[k][0, 0] = np.nan
        _edit_weights(ckpt, bad, nan)
    elif case == "std-zero":
        pre["image_std"] = [0.5, 0, 0.5]
    elif case == "patch-string":
        cfg["vision_config"]["patch_size"] = "4"
    elif case == "crop-string":
        pre["crop_size"] = "big"
    elif case == "shape":
        def widen(t):
            k = next(k for k in t if k.endswith("encoder.layers.0.self_attn.q_proj.weight"))
            t[k] = np.zeros((48, 32), t[k].dtype)
        _edit_weights(ckpt, bad, widen)
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ModelError) as e:
        convert(bad, tmp_path / "out", ConvertOptions())
    assert message in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_failed_language_model_conversion_keeps_its_log(ckpt, tmp_path, monkeypatch):
    script = tmp_path / "tools" / "convert_hf_to_gguf.py"
    script.parent.mkdir()
    script.write_text("import sys\nprint('converter exploded')\nsys.exit(3)\n")
    monkeypatch.setenv("ATP_LLAMA_CPP_TOOLS", str(script.parent))
    with pytest.raises(ModelError, match="exit code 3") as e:
        convert(ckpt, tmp_path / "out", ConvertOptions(outtype="f16"))
    log = tmp_path / "out.convert.log"
    assert str(log) in str(e.value) and "converter exploded" in log.read_text()
    assert not (tmp_path / "out").exists()


def test_an_output_folder_under_a_file_is_refused_before_any_work(ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        convert(ckpt, tmp_path / "file" / "out", ConvertOptions())
    assert (tmp_path / "file").read_text() == "x"
