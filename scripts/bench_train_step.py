#!/usr/bin/env python3
"""Which number format trains the default model fastest on this CPU, and does it change the loss?

  python scripts/bench_train_step.py --steps 4 --threads 2

Runs stage 2 of the recipe (projector frozen, LoRA r16 on SmolLM2-135M, 4 images x 8 packed questions a step, the
tower's features computed on first use as in training) for a few optimiser steps from the committed projector and
adapters, once in float32 and once with bfloat16 autocast, side by side in one process, and prints the mean step time
(the first step, which warms up, left out) and the first step's loss of each. bfloat16 runs only where the CPU
multiplies it natively (AVX512-BF16 or AMX-BF16: `train.model_io.bf16_is_fast`); elsewhere torch emulates it tens of
times slower than float32 (research/bench_bf16.py) and training keeps float32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli import cpu  # noqa: E402


def step_times(checkpoint: Path, data: Path, out: Path, steps: int, bf16: bool,
               lora: Path) -> tuple[list[float], float]:
    """(seconds of each optimiser step, loss of the first) of a short stage-2 run from the adapters `lora`."""
    from atp_cli.train.projector import ProjectorConfig, train_projector

    stamps: list[float] = [time.perf_counter()]
    losses: list[float] = []

    def on_step(entry) -> None:
        stamps.append(time.perf_counter())
        losses.append(entry.loss)

    cfg = ProjectorConfig(steps=steps, lr=0.0, lora_rank=16, llm_lr=1e-3, bf16=bf16, save_every=10**6, seed=1,
                          init_lora=lora)
    train_projector(checkpoint, data, out, cfg, on_step=on_step)
    return [b - a for a, b in zip(stamps, stamps[1:])], losses[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps per format (the first is not timed)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core)")
    args = ap.parse_args()
    if args.steps < 2:
        sys.exit("--steps must be at least 2: the first step warms up and is not timed")
    if args.threads < 0:
        sys.exit("--threads must be 0 (every usable core) or more")
    import torch

    from atp_cli.data.mix import TRAINING_MIX, write_mixed_split
    from atp_cli.default_model import ARTIFACTS, assemble_checkpoint
    from atp_cli.train.model_io import bf16_is_fast

    torch.set_num_threads(args.threads or cpu.usable_cores())
    print(cpu.describe())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    formats = [("float32", False)] + ([("bfloat16 autocast", True)] if bf16_is_fast(torch.device("cpu")) else [])
    if len(formats) == 1:
        print("bfloat16 is not native on this CPU (no AVX512-BF16 / AMX-BF16): float32 only")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = assemble_checkpoint(work / "ckpt", ARTIFACTS / "projector.safetensors")
        data = write_mixed_split(work / "data", "train", 4 * args.steps, TRAINING_MIX, turns=8)
        for name, bf16 in formats:
            times, loss = step_times(checkpoint, data, work / name.split()[0], args.steps, bf16,
                                     ARTIFACTS / "lora.safetensors")
            timed = times[1:]
            print(f"{name}: {sum(timed) / len(timed):.1f} s a step (steps 2-{args.steps}: "
                  f"{', '.join(f'{t:.1f}' for t in timed)}), first step's loss {loss:.4f}")


if __name__ == "__main__":
    main()
