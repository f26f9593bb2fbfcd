#!/usr/bin/env python3
"""Peak memory of `atp convert` on synthetic llava-hf checkpoints with LLaVA-1.5-7B's tensor shapes.

The checkpoints have a CLIP ViT-L/14-336 tower and a language model 4096 wide (32000 x 4096 embeddings,
11008-wide MLP: every tensor as large as in LLaVA-1.5-7B) but only a few decoder layers. If the converter
streams tensors, peak memory does not grow with the number of layers; then the 32-layer 7B model needs the
same peak as these. Prints checkpoint size, wall time, and the peak over the process tree (atp and llama.cpp's
converter) of anonymous memory (RssAnon: what the conversion really holds) and of total RSS (which also counts
pages of the memory-mapped input and output files; the kernel can drop those at any time), per depth.

  python scripts/bench_convert_memory.py --layers 2,4 --outtype q4_k_m
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny_llava import train_spm  # noqa: E402

D, FF, VOCAB, HEADS = 4096, 11008, 32000, 32
VD, VFF, VL, VHEADS, PATCH, SIZE = 1024, 4096, 24, 16, 14, 336


def tensor_shapes(n_layer: int) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {
        "language_model.model.embed_tokens.weight": (VOCAB, D),
        "language_model.model.norm.weight": (D,),
        "language_model.lm_head.weight": (VOCAB, D),
        "multi_modal_projector.linear_1.weight": (D, VD), "multi_modal_projector.linear_1.bias": (D,),
        "multi_modal_projector.linear_2.weight": (D, D), "multi_modal_projector.linear_2.bias": (D,),
        "vision_tower.vision_model.embeddings.class_embedding": (VD,),
        "vision_tower.vision_model.embeddings.patch_embedding.weight": (VD, 3, PATCH, PATCH),
        "vision_tower.vision_model.embeddings.position_embedding.weight": ((SIZE // PATCH) ** 2 + 1, VD),
        "vision_tower.vision_model.pre_layrnorm.weight": (VD,), "vision_tower.vision_model.pre_layrnorm.bias": (VD,),
    }
    for i in range(n_layer):
        p = f"language_model.model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[p + f"self_attn.{n}.weight"] = (D, D)
        s[p + "mlp.gate_proj.weight"] = s[p + "mlp.up_proj.weight"] = (FF, D)
        s[p + "mlp.down_proj.weight"] = (D, FF)
        s[p + "input_layernorm.weight"] = s[p + "post_attention_layernorm.weight"] = (D,)
    for i in range(VL):
        p = f"vision_tower.vision_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"self_attn.{n}.weight"], s[p + f"self_attn.{n}.bias"] = (VD, VD), (VD,)
        for n in ("layer_norm1", "layer_norm2"):
            s[p + f"{n}.weight"], s[p + f"{n}.bias"] = (VD,), (VD,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (VFF, VD), (VFF,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (VD, VFF), (VD,)
    return s


def write_checkpoint(folder: Path, n_layer: int) -> int:
    """Two bf16 safetensors shards, written tensor by tensor; returns the bytes on disk."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True)
    spm = train_spm(folder)
    spm.replace(folder / "tokenizer.model")
    spm.with_suffix(".vocab").unlink(missing_ok=True)
    LlamaTokenizer.from_pretrained(str(folder), legacy=False).save_pretrained(folder)
    shapes = tensor_shapes(n_layer)
    names = list(shapes)
    g = torch.Generator().manual_seed(0)
    index = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: (torch.randn(shapes[n], generator=g) * 0.02).to(torch.bfloat16) for n in part},
                  str(folder / shard), metadata={"format": "pt"})
        index.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 32000,
        "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "image_seq_length": 576,
        "text_config": {"model_type": "llama", "hidden_size": D, "intermediate_size": FF, "num_hidden_layers": n_layer,
                        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": VOCAB,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "architectures": ["LlamaForCausalLM"]},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": VD, "intermediate_size": VFF,
                          "num_hidden_layers": VL, "num_attention_heads": VHEADS, "patch_size": PATCH,
                          "image_size": SIZE, "hidden_act": "quick_gelu", "projection_dim": 768},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def tree_memory(root: int) -> tuple[int, int]:
    """(RssAnon, RSS) in KiB summed over `root` and its descendants, from /proc."""
    pids, anon, rss = [root], 0, 0
    while pids:
        pid = pids.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        anon += int(fields.get("RssAnon", "0 kB").split()[0])
        rss += int(fields.get("VmRSS", "0 kB").split()[0])
    return anon, rss


def convert_peaks(ckpt: Path, out: Path, outtype: str) -> tuple[float, float, float]:
    """(wall s, peak anonymous GiB, peak RSS GiB) of one `atp convert`, sampled every 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "atp_cli", "convert", str(ckpt), str(out), "--outtype", outtype],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        anon, rss = tree_memory(proc.pid)
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"atp convert failed with {proc.returncode}")
    return time.perf_counter() - t0, peak_anon / 2**20, peak_rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--outtype", default="q4_k_m")
    args = ap.parse_args()
    print("| decoder layers | checkpoint GiB | outtype | wall s | peak anonymous GiB | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for n_layer in (int(x) for x in args.layers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ckpt"
            size = write_checkpoint(ckpt, n_layer)
            wall, anon, rss = convert_peaks(ckpt, Path(tmp) / "out", args.outtype)
            print(f"| {n_layer} | {size / 2**30:.2f} | {args.outtype} | {wall:.0f} | {anon:.2f} | {rss:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
