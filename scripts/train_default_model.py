#!/usr/bin/env python3
"""Reproduce the default model's trained artifacts (seeded): data -> projector -> projector + LoRA -> ATP modules.

  python scripts/train_default_model.py --work /tmp/atp-default      # defaults = the committed artifacts

Stage 1 trains the projector (tower and SmolLM2 frozen) on generated scene questions; stage 2 goes on training
the projector together with rank-16 LoRA adapters on every linear layer of SmolLM2, on scenes and Fashion-MNIST
mosaics mixed (--source); stage 3 trains the ATP threshold modules toward an average of --budget visual tokens
(paper metric) with the language model frozen.
The artifacts are written into atp_cli/assets_default/ (projector.safetensors, lora.safetensors,
atp.safetensors). --resume starts stage 2 from the committed projector instead of re-running stage 1.
On 2 CPU cores a step of 4 examples takes about 15 s (stage 1), 17 s (stage 2) and 15 s (stage 3) at 576 visual
tokens: the committed artifacts took 61, about 57 and 15 minutes. A GPU is used when present. Learning rates
are constant, so a longer run's snapshot at step N (saved every 25 steps) equals a run of N steps.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.mix import SOURCES, write_mixed_split  # noqa: E402
from atp_cli.data.scenes import write_split  # noqa: E402
from atp_cli.default_model import ATP_WEIGHTS, LORA, PROJECTOR, assemble_checkpoint  # noqa: E402
from atp_cli.train.trainer import ProjectorConfig, TrainConfig, train, train_projector  # noqa: E402


def log(entry, t0=time.perf_counter()) -> None:
    print(f"step {entry.step} loss {entry.loss:.3f} tokens {entry.tokens_avg:.1f} ({time.perf_counter() - t0:.0f} s)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/atp-default"))
    ap.add_argument("--train-examples", type=int, default=3000)
    ap.add_argument("--projector-steps", type=int, default=240)
    ap.add_argument("--lora-steps", type=int, default=200)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--atp-steps", type=int, default=50)
    ap.add_argument("--atp-lr", type=float, default=5e-3)
    ap.add_argument("--budget", type=float, default=144.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="start from the committed projector (skip stage 1)")
    ap.add_argument("--source", choices=["scenes", "mix"], default="mix",
                    help="data of stages 2 and 3: scenes, or scenes and Fashion-MNIST mosaics mixed")
    args = ap.parse_args()
    data = write_split(args.work / "data", "train", args.train_examples)  # stage 1: scenes
    later = data if args.source == "scenes" else write_mixed_split(args.work / "data-mix", "train",
                                                                   args.train_examples, tuple(SOURCES))
    if not args.resume:
        base = assemble_checkpoint(args.work / "base", seed=args.seed)
        stage1 = train_projector(base, data, args.work / "projector",
                                 ProjectorConfig(steps=args.projector_steps, seed=args.seed), on_step=log)
        shutil.copyfile(stage1 / "projector.safetensors", PROJECTOR)
    if args.lora_steps > 0:
        start = assemble_checkpoint(args.work / "stage2-start", load_file(str(PROJECTOR)), seed=args.seed)
        stage2 = train_projector(start, later, args.work / "lora",
                                 ProjectorConfig(steps=args.lora_steps, seed=args.seed + 1, lora_rank=args.lora_rank),
                                 on_step=log)
        shutil.copyfile(stage2 / "projector.safetensors", PROJECTOR)
        shutil.copyfile(stage2 / "lora.safetensors", LORA)
    if args.atp_steps == 0:
        return
    tuned = assemble_checkpoint(args.work / "tuned", load_file(str(PROJECTOR)), seed=args.seed,
                                lora_path=LORA if LORA.is_file() else None)
    train(tuned, later, ATP_WEIGHTS, TrainConfig(budget=args.budget, steps=args.atp_steps, lr=args.atp_lr,
                                                    seed=args.seed), on_step=log)
    print(f"wrote {PROJECTOR}, {LORA} and {ATP_WEIGHTS}")


if __name__ == "__main__":
    main()
