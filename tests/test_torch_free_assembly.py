"""The default model assembles without torch or transformers: the LoRA merge into the GGUF in numpy and the
DINOv2 position table resized in numpy, each checked against transformers on the same weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from atp_cli.assets import smollm2_gguf
from atp_cli.default_model import LORA, PROJECTOR
from atp_cli.errors import ModelError
from atp_cli.lora_gguf import merge_lora_gguf, rope_permute
from converters.vision_towers import bicubic_matrix, dinov2_positions

ROOT = Path(__file__).resolve().parents[1]
DINO = {"model_type": "dinov2", "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 48, "patch_size": 14, "image_size": 518, "layer_norm_eps": 1e-6}


def test_position_table_resizes_as_transformers_does():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import Dinov2Config
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    table = np.random.default_rng(0).standard_normal((1, 1 + 37 * 37, 24)).astype(np.float32)
    emb = Dinov2Embeddings(Dinov2Config(**{k: v for k, v in DINO.items() if k != "model_type"}))
    for size in (336, 224, 518):
        with torch.no_grad():
            emb.position_embeddings.copy_(torch.from_numpy(table))
            dummy = torch.zeros(1, 1 + (size // 14) ** 2, 24)
            want = emb.interpolate_pos_encoding(dummy, size, size).reshape(-1, 24).numpy()
        got = dinov2_positions(DINO, table, size)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
        assert np.array_equal(got[0], table[0, 0])  # the CLS row is never resampled


def test_bicubic_matrix_is_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    for out in (4, 9, 13, 1):
        want = torch.nn.functional.interpolate(x, size=(out, out), mode="bicubic", align_corners=False)[0].numpy()
        m = bicubic_matrix(9, out)
        assert np.allclose(np.einsum("ai,cij,bj->cab", m, x[0].numpy(), m), want, atol=1e-10)
    assert np.allclose(bicubic_matrix(7, 7), np.eye(7))  # same size: the identity
    assert np.allclose(bicubic_matrix(5, 11).sum(1), 1.0)  # weights of every output sum to one


def test_rope_permute_interleaves_the_halves_of_each_head():
    w = np.arange(8)[:, None] * np.ones((1, 3))  # 2 heads of 4 rows
    assert rope_permute(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.skipif(not LORA.is_file(), reason="no LoRA adapters committed")
def test_numpy_merge_equals_transformers_merge(tmp_path):
    """transformers reads the merged GGUF (undoing llama.cpp's q/k order itself) and gets what transformers + the
    torch merge of the same adapters into the packaged SmolLM2 give, up to q8_0 rounding."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from atp_cli.train import lora

    merged = merge_lora_gguf(smollm2_gguf(), LORA, tmp_path / "merged.gguf")
    src = smollm2_gguf()
    load = lambda p: AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,  # noqa: E731
                                                          dtype=torch.float32).model
    reference = load(src)
    lora.merge(reference, LORA)
    ours = dict(load(merged).named_parameters())
    base = dict(load(src).named_parameters())
    for name, want in reference.named_parameters():
        got, want = ours[name].detach().numpy(), want.detach().numpy()
        if want.ndim == 2 and "embed" not in name:
            step = np.abs(want).reshape(want.shape[0], -1, 32).max(-1, keepdims=True) / 127  # q8_0 block scale
            err = np.abs(got - want).reshape(step.shape[0], -1, 32)
            # half a q8_0 step, plus the f16 rounding of the block scale times the largest code (127 / 2**11)
            assert (err <= (0.5 + 127 / 2**11) * step + 1e-7).all(), name
            assert not np.allclose(base[name].detach().numpy(), want, atol=1e-4), f"{name}: no adapter merged"
        else:
            assert np.array_equal(got, want), name
    assert gguf.GGUFReader(merged).fields["tokenizer.chat_template"].contents()  # metadata copied


def test_adapters_that_do_not_fit_are_refused(tmp_path):
    from safetensors.numpy import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 576), np.float32),
               "layers.0.self_attn.q_proj.lora_B.weight": np.zeros((100, 4), np.float32)}, str(bad))
    out = tmp_path / "out.gguf"
    with pytest.raises(ModelError, match="delta"):
        merge_lora_gguf(smollm2_gguf(), bad, out)
    assert not out.exists() and not list(tmp_path.glob("*.part"))  # nothing half-written
    save_file({"layers.0.self_attn.rotary.lora_A.weight": np.zeros((4, 576), np.float32),
               "layers.0.self_attn.rotary.lora_B.weight": np.zeros((576, 4), np.float32)}, str(bad))
    with pytest.raises(ModelError, match="linear modules"):
        merge_lora_gguf(smollm2_gguf(), bad, out)


NO_TORCH = """
import sys
for name in ("torch", "transformers", "accelerate", "peft"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from pathlib import Path
import atp_cli
from atp_cli.default_model import build_default_model
folder = build_default_model(Path(sys.argv[1]), force=True)
cfg = atp_cli.PipelineConfig(max_tokens=4)
with atp_cli.Pipeline.from_dir(folder, "atp", cfg) as pipe:
    print("ANSWER", pipe(sys.argv[2], "What colour is the triangle?").text)
"""


@pytest.mark.skipif(not PROJECTOR.is_file(), reason="no trained projector committed")
def test_assembly_and_answer_import_no_torch(tmp_path):
    image = ROOT / "atp_cli" / "examples" / "shapes.png"
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "m"), str(image)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = next(line for line in done.stdout.splitlines() if line.startswith("ANSWER")).removeprefix("ANSWER")
    assert answer.strip()
    assert {p.name.split("-")[0] for p in (tmp_path / "m").glob("*.gguf")} == {"model", "mmproj"}


def test_random_clip_tower_for_speed_runs_converts_without_torch(tmp_path):
    """The speed bench's random CLIP tower is written with numpy and passes the converter's and mmproj checks."""
    from atp_cli.bench.speed import random_clip_checkpoint
    from atp_cli.runtime.mmproj_check import check_mmproj
    from converters.checkpoint import check_tensors, open_checkpoint
    from converters.mmproj import n_blocks_run, write_mmproj
    from converters.vision_towers import layout

    small = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 2, "image_size": 56, "patch_size": 14, "hidden_act": "quick_gelu"}
    ckpt = open_checkpoint(random_clip_checkpoint(tmp_path / "ckpt", 48, small))
    lay = layout(ckpt.vision)
    check_tensors(ckpt, lay.block, lay.block_map, n_blocks_run(ckpt), text=False)
    write_mmproj(ckpt, tmp_path / "mmproj.gguf", image_size=56, keep_cls=False)
    assert check_mmproj(tmp_path / "mmproj.gguf").n_tokens == 16


def test_converting_a_checkpoint_without_the_convert_extra_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from converters.convert import convert

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    from atp_cli.errors import InputError

    with pytest.raises(InputError, match=r"atp\[convert\]"):
        convert(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
