#!/usr/bin/env python3
"""Reproduce the default model's trained artifacts (seeded): data -> projector -> ATP modules.

  python scripts/train_default_model.py --work /tmp/atp-default --projector-steps 240 --atp-steps 150

Stage 1 trains the projector (tower and SmolLM2 frozen) on generated scene questions; stage 2 trains the ATP
threshold modules toward an average of --budget visual tokens (paper metric) with the language model frozen.
Both artifacts are written into atp_cli/assets_default/ (projector.safetensors, atp.safetensors). On 2 CPU
cores a step of 4 examples takes about 15 s at 576 visual tokens; a GPU is used when present.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.scenes import write_split  # noqa: E402
from atp_cli.default_model import ATP_WEIGHTS, PROJECTOR, assemble_checkpoint  # noqa: E402
from atp_cli.train.trainer import ProjectorConfig, TrainConfig, train, train_projector  # noqa: E402


def log(entry, t0=time.perf_counter()) -> None:
    print(f"step {entry.step} loss {entry.loss:.3f} tokens {entry.tokens_avg:.1f} ({time.perf_counter() - t0:.0f} s)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/atp-default"))
    ap.add_argument("--train-examples", type=int, default=3000)
    ap.add_argument("--projector-steps", type=int, default=240)
    ap.add_argument("--atp-steps", type=int, default=150)
    ap.add_argument("--budget", type=float, default=144.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = write_split(args.work / "data", "train", args.train_examples)
    base = assemble_checkpoint(args.work / "base", seed=args.seed)
    tuned = train_projector(base, data, args.work / "projector",
                            ProjectorConfig(steps=args.projector_steps, seed=args.seed), on_step=log)
    shutil.copyfile(tuned / "projector.safetensors", PROJECTOR)
    train(tuned, data, ATP_WEIGHTS, TrainConfig(budget=args.budget, steps=args.atp_steps, seed=args.seed), on_step=log)
    print(f"wrote {PROJECTOR} and {ATP_WEIGHTS}")


if __name__ == "__main__":
    main()
