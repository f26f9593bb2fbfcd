"""Loading a llava-hf checkpoint for training and saving what `atp convert` needs beside it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from atp_cli.cpu import has_native_bf16


def load_model(checkpoint: Path, seed: int):
    """(model in float32 on the GPU when present, tokenizer, device), with every random source seeded."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    random.seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).to(device)
    return model, AutoTokenizer.from_pretrained(checkpoint), device


def bf16_is_fast(device: torch.device) -> bool:
    """Does `device` compute bfloat16 matrix products natively? On CPUs without AVX512-BF16 or AMX, torch emulates
    them tens of times slower than float32 (research/bench_bf16.py), so autocast must stay off there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return has_native_bf16()  # not Linux: no flags to read, so float32


def image_setup(model, ckpt: Path) -> tuple[int, int, list, list]:
    """(image size the mmproj is converted at, visual tokens, mean, std) of a checkpoint."""
    vc = model.config.vision_config
    pre_path = ckpt / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
    size = int(pre.get("crop_size", {}).get("height", vc.image_size))
    n_visual = (size // vc.patch_size) ** 2
    return size, n_visual, pre.get("image_mean", [0.5] * 3), pre.get("image_std", [0.5] * 3)


def copy_side_files(src: Path, dst: Path) -> None:
    """Files save_pretrained does not write but `atp convert` and training read."""
    for extra in ("preprocessor_config.json", "tokenizer.model"):
        if (src / extra).is_file():
            (dst / extra).write_bytes((src / extra).read_bytes())
