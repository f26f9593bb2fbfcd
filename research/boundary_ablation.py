#!/usr/bin/env python3
"""Where should ATP's modules sit? Accuracy on the validation split at one budget, boundaries against boundaries.

  python research/boundary_ablation.py --variants none,atp,uniform,free:5-14-23,free:2-10-20

With a budget of 25 % of the visual token-layers, every layer before the first module costs full price: on a
30-layer decoder a first module before layer 5 has spent two thirds of the budget there, so the later layers must
make do with ~46 tokens, while a first module before layer 2 leaves them ~113. This script measures what that
costs, on the validation split only (the test split is never used for choosing): `free:B1-B2-B3` is training-free
ATP (relevance mass + SAP grids of strides 4, 6, 8) with those boundaries, its mass level calibrated to the budget
on a few validation prompts that are not scored; `const:B1-B2-B3` is ATP's threshold rule with one fixed pair of
thresholds (theta_sp 0.8, theta_r calibrated the same way); `atp` is the model's own modules; `uniform` keeps evenly
spaced tokens after layer 2 at the same budget; `none` keeps everything. Each question of an image is asked in a
fresh conversation, as `atp bench quality` does. Prints one line per variant: exact-match accuracy, the mean
visual tokens averaged over all layers (paper metric) and the per-type counts; for `atp`, also the range of the
thresholds (theta_r, theta_sp) each trained module predicted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.calibration import average_tokens, bisect_level, calibrate_pipeline  # noqa: E402
from atp_cli.data.mix import write_mixed_split  # noqa: E402
from atp_cli.data.scenes import exact_match  # noqa: E402
from atp_cli.default_model import DEFAULT_DIR  # noqa: E402
from atp_cli.evaluation import load_turns  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.pruning.atp import AtpFreeStrategy, AtpStrategy, ThresholdMLP  # noqa: E402
from atp_cli.pruning.budget import params_for_budget  # noqa: E402
from atp_cli.pruning.config import AtpConfig  # noqa: E402
from atp_cli.pruning.registry import DEFAULT_FREE_STRIDES, make_strategy  # noqa: E402

CALIBRATION_PROMPTS = 8
CONSTANT_THETA_SP = 0.8  # s_sp > 0.8: the grids of strides 4, 6 and 8 (48 of 576 tokens) always survive


def layout(pipe: Pipeline, bounds: tuple[int, ...]) -> AtpConfig:
    """An ATP configuration with these boundaries for the pipeline's model (its visual grid, if the mmproj says)."""
    return AtpConfig(pipe.model.n_layer, bounds, grid=pipe.weights.config.grid if pipe.weights else None)


def training_free(pipe: Pipeline, bounds: tuple[int, ...], budget: float, prompts: list) -> AtpFreeStrategy:
    """atp-free with these boundaries, its mass level bisected to meet `budget` on `prompts`."""
    config, cal = calibrate_pipeline(pipe, prompts, budget, DEFAULT_FREE_STRIDES, config=layout(pipe, bounds))
    print(f"  {bounds}: mass level {cal.mass[0]:.3f} -> {cal.achieved:.1f} tokens on the calibration prompts",
          flush=True)
    return AtpFreeStrategy(config, list(cal.mass), list(cal.stride), pipe.n_visual)


def constant_thresholds(pipe: Pipeline, bounds: tuple[int, ...], budget: float, prompts: list) -> AtpStrategy:
    """ATP's keep rule with the same thresholds for every image and module: theta_sp = CONSTANT_THETA_SP, theta_r
    bisected (as theta_r = -ln(level)) to meet `budget` on `prompts`."""
    config = layout(pipe, bounds)

    def strategy(level: float) -> AtpStrategy:
        mlp = ThresholdMLP.constant(-np.log(level), CONSTANT_THETA_SP)
        return AtpStrategy(config, [mlp] * len(bounds), pipe.n_visual)

    pipe.use_strategy(strategy(0.5))  # segment layout
    questions = [pipe.prompt(image, question)[0] for image, question in prompts]
    level, achieved = bisect_level(lambda x: float(np.mean(average_tokens(pipe.decoder, questions, strategy(x)))),
                                   budget, 1e-4, 0.999)
    print(f"  {bounds}: theta_r {-np.log(level):.3f}, theta_sp {CONSTANT_THETA_SP} -> {achieved:.1f} tokens on the "
          "calibration prompts", flush=True)
    return strategy(level)


def print_thresholds(strategy: AtpStrategy) -> None:
    """The range of the thresholds the model's modules predicted over the questions just asked, per module."""
    n = len(strategy.config.boundaries)
    for m, boundary in enumerate(strategy.config.boundaries):
        theta_r, theta_sp = zip(*strategy.last_thresholds[m::n])
        print(f"  module before layer {boundary}: theta_r {min(theta_r):.2f}-{max(theta_r):.2f}, "
              f"theta_sp {min(theta_sp):.3f}-{max(theta_sp):.3f}", flush=True)


def strategy_for(pipe: Pipeline, variant: str, budget: float, prompts: list):
    n_layer, n_visual = pipe.model.n_layer, pipe.n_visual
    if variant.startswith("const:"):
        return constant_thresholds(pipe, tuple(int(b) for b in variant[6:].split("-")), budget, prompts)
    if variant.startswith("free:"):
        return training_free(pipe, tuple(int(b) for b in variant[5:].split("-")), budget, prompts)
    if variant == "uniform":
        p = params_for_budget("uniform", budget, n_layer, n_visual)
        return make_strategy("uniform", n_layer, n_visual, k=p["k"], ratio=p["ratio"])
    return make_strategy(variant, n_layer, n_visual, pipe.weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR, help="converted model folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/atp-ablation"), help="where the split is rendered")
    ap.add_argument("--images", type=int, default=40, help="validation images")
    ap.add_argument("--per-image", type=int, default=2, help="questions asked per image")
    ap.add_argument("--budget", type=float, default=144.0)
    ap.add_argument("--variants", default="none,atp,uniform,free:5-14-23,free:2-10-20")
    ap.add_argument("--calibrate-only", action="store_true",
                    help="print each variant's calibrated level (e.g. const: theta_r for --start-thresholds) and "
                         "score no questions")
    args = ap.parse_args()
    split = args.work / "val.jsonl"
    if not split.is_file():
        write_mixed_split(args.work, "val", args.images, turns=8)
    rows = load_turns(split, args.per_image)
    scored = {(r["image_path"], r["question"]) for r in rows}
    calibration = [q for q in ((r["image_path"], r["question"]) for r in load_turns(split, 8)[1::7]) if q not in scored]
    print(f"{len(rows)} validation questions", flush=True)
    with Pipeline.from_dir(args.model, "none", PipelineConfig(max_tokens=8)) as pipe:
        for variant in args.variants.split(","):
            strategy = strategy_for(pipe, variant, args.budget, calibration[:CALIBRATION_PROMPTS])
            if args.calibrate_only:
                continue
            pipe.use_strategy(strategy)
            t0, kinds, tokens = time.perf_counter(), defaultdict(lambda: [0, 0]), []
            for r in rows:
                result = pipe(r["image_path"], r["question"])
                kinds[r["kind"]][0] += exact_match(result.text, r["answer"])
                kinds[r["kind"]][1] += 1
                tokens.append(result.stats.visual_tokens_avg)
            right = sum(k[0] for k in kinds.values())
            print(f"{variant}: {right}/{len(rows)} = {right / len(rows):.1%}, {np.mean(tokens):.1f} tokens "
                  f"({time.perf_counter() - t0:.0f} s) " + " ".join(f"{k} {r}/{n}" for k, (r, n) in sorted(kinds.items())),
                  flush=True)
            if isinstance(strategy, AtpStrategy):
                print_thresholds(strategy)


if __name__ == "__main__":
    main()
