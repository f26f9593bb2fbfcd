#!/usr/bin/env python3
"""Do the pruning modules keep the patches of the object a question names (content), or follow position?

For validation scenes whose question names one shape (colour / colour_at / shape_at / position), the share of that
shape's patches each module keeps, over the share of all patches it keeps: 1 means the module is blind to the
target, above 1 that it follows it. Also the mean raster row of the kept tokens (11.5 is the image's middle; a
module drawn to the last rows, next to the question, sits higher).

  python research/target_coverage.py [--model DIR] [-n 40] [--strategies atp,cdpruner,hybrid]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.scenes import QUADRANTS, make_example  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402

KINDS = ("colour", "colour_at", "shape_at", "position")
GRID = 24


def target_patches(ex) -> np.ndarray:
    """Raster indices of the patches covered by the shape the question names."""
    q = ex.question
    if ex.kind == "colour":
        target = next(it for it in ex.items if it.shape in q)
    elif ex.kind == "position":
        target = next(it for it in ex.items if f"{it.colour} {it.shape}" in q)
    else:
        where = next(w for w in QUADRANTS if q.endswith(f"the {w}?"))
        half = 168
        target = next(it for it in ex.items if QUADRANTS[2 * (it.y >= half) + (it.x >= half)] == where)
    words = ex.patch_words(GRID)
    return np.asarray([i for i, w in enumerate(words) if w[:2] == (target.colour, target.shape)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache/atp/default-model")
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--strategies", default="atp,atp-free,cdpruner,hybrid,fastv,dart")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--debias", action="store_true", help="ATP relevance from the distance-debiased scores")
    args = ap.parse_args()
    examples = [make_example("val", i, KINDS[i % len(KINDS)]) for i in range(args.n)]
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024, n_threads=args.threads), max_tokens=1)
    with Pipeline.from_dir(args.model, "none", cfg) as pipe:
        if args.debias and pipe.weights is not None:  # the stored modules, scored from debiased attention
            pipe.weights = replace(pipe.weights, config=replace(pipe.weights.config, debias=True))
        for name in args.strategies.split(","):
            pipe.set_strategy(name)
            lift, rows = [], []
            for ex in examples:
                tgt = target_patches(ex)
                if not len(tgt):
                    continue
                r = pipe(ex.image, ex.question)
                stages = list(r.stats.kept_raster)
                if r.visual_in < GRID * GRID:  # a pre-LLM selection: its rows are the first "module"
                    prompt, _ = pipe.prompt(ex.image, ex.question)
                    stages.insert(0, _visual_raster(prompt))
                lift.append([np.isin(tgt, k).mean() / (len(k) / GRID**2) for k in stages])
                rows.append([float(np.mean(np.asarray(k) // GRID)) for k in stages])
            lift_m, rows_m = np.mean(lift, 0), np.mean(rows, 0)
            print(f"{name:10s} target lift per stage {np.round(lift_m, 2).tolist()}  "
                  f"mean kept row {np.round(rows_m, 1).tolist()}  (n={len(lift)})", flush=True)


def _visual_raster(prompt) -> np.ndarray:
    """Raster indices of the visual rows a prompt holds (their positions minus the image's origin)."""
    pos = prompt.all_positions()[prompt.visual_mask()]
    return pos - prompt.visual_origin()


if __name__ == "__main__":
    main()
