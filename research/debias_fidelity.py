#!/usr/bin/env python3
"""ATP with raw and with distance-debiased relevance, each with fixed thresholds calibrated to the same budget on
validation questions: writes one model folder per variant (a copy of --model with those modules attached), to be
compared by `atp bench quality` on other validation questions.

  python research/debias_fidelity.py --out /tmp/debias [--model DIR] [--budget 144]
  atp bench quality --model /tmp/debias/raw --split val --source mix -n 48 --strategies none,atp --no-peer
  atp bench quality --model /tmp/debias/debiased ...
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.calibration import calibrate_thresholds  # noqa: E402
from atp_cli.data.mix import make_mixed_example  # noqa: E402
from atp_cli.data.scenes import PROMPT_SUFFIX  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.pruning.atp import ThresholdMLP  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from converters.convert import attach  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache/atp/default-model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=144.0)
    ap.add_argument("--theta-sp", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    cal = [make_mixed_example("val", 1000 + i) for i in range(12)]  # not among the first validation questions
    questions = [(e.image, e.question + PROMPT_SUFFIX) for e in cal]
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024, n_threads=args.threads), max_tokens=8)
    with Pipeline.from_dir(args.model, "none", cfg) as pipe:
        weights = pipe.weights
        for name, debias in (("raw", False), ("debiased", True)):
            config = replace(weights.config, debias=debias)
            theta, reached = calibrate_thresholds(pipe, questions, args.budget, config, args.theta_sp)
            folder = args.out / name
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(args.model, folder)
            mlps = tuple([ThresholdMLP.constant(theta, args.theta_sp, config.hidden)] * len(config.boundaries))
            attach(folder, replace(weights, config=config, mlps=mlps, budgets=(), pre_keep=()))
            print(f"{name}: theta_r {theta:.4f}, theta_sp {args.theta_sp} -> {reached:.1f} tokens -> {folder}",
                  flush=True)


if __name__ == "__main__":
    main()
