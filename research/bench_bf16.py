#!/usr/bin/env python3
"""Is bfloat16 autocast worth it on this machine? One of the language model's matrix products, timed both ways.

  python research/bench_bf16.py

Times a 600 x 576 by 576 x 1536 product (about an image's tokens through SmolLM2-135M's MLP) in float32 and in
bfloat16, side by side, and prints what `train.model_io.bf16_is_fast` decides. Where the CPU lacks AVX512-BF16 and
AMX, torch emulates bfloat16 and training keeps float32 (docs/TRAINING.md has the figures).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atp_cli.train.model_io import bf16_is_fast  # noqa: E402


def product_ms(dtype: torch.dtype, repeats: int = 20) -> float:
    a, b = torch.randn(600, 576).to(dtype), torch.randn(576, 1536).to(dtype)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 1000 * (time.perf_counter() - t0) / repeats


def main() -> None:
    f32, bf16 = product_ms(torch.float32), product_ms(torch.bfloat16)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    print(f"float32 {f32:.1f} ms, bfloat16 {bf16:.1f} ms (bfloat16 / float32 = {bf16 / f32:.1f}x)")
    print(f"bf16_is_fast: {bf16_is_fast(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
