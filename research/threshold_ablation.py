#!/usr/bin/env python3
"""Trained thresholds against constant ones: two `atp bench quality` runs over the same questions, compared pairwise.

  python research/threshold_ablation.py --trained RUN_A --constant RUN_B [--trained-row atp] [--constant-row atp]

RUN_A and RUN_B are `--out` folders of `atp bench quality` on the same split and question count, each with an
unpruned row of the same model (its language model and encoder; only the ATP modules differ), so agreement and KL
in each are against the same reference. Prints, per measure (accuracy, answer agreement, KL of the first answer
token, top-1 agreement, visual tokens averaged over the layers), both rows' means and the paired difference
trained - constant with its 95 % bootstrap interval, over the questions both runs answered; and per question type
the agreement of each. Refuses runs whose unpruned answers differ (another model, or other questions).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.bench.fidelity import mean_interval, paired_difference  # noqa: E402

MEASURES = (("accuracy", "correct", 100.0), ("agreement", "agree", 100.0), ("kl", "kl", 1.0), ("top1", "top1", 100.0),
            ("tokens", "tokens_avg", 1.0))


def records(run: Path, row: str) -> dict[int, dict]:
    """The run's records of `row` and of its unpruned row, by question index: {i: {"row": rec, "none": rec}}."""
    by_i: dict[int, dict] = defaultdict(dict)
    for line in (run / "run" / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["row"] in (row, "none"):
            by_i[rec["i"]]["row" if rec["row"] == row else "none"] = rec
    return {i: r for i, r in by_i.items() if len(r) == 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trained", type=Path, required=True)
    ap.add_argument("--constant", type=Path, required=True)
    ap.add_argument("--trained-row", default="atp")
    ap.add_argument("--constant-row", default="atp")
    args = ap.parse_args()
    a, b = records(args.trained, args.trained_row), records(args.constant, args.constant_row)
    common = sorted(set(a) & set(b))
    if not common:
        sys.exit("the runs share no answered question")
    differ = [i for i in common if a[i]["none"]["answer"] != b[i]["none"]["answer"]]
    if differ:
        sys.exit(f"the unpruned answers differ on {len(differ)} of {len(common)} questions: not the same model or "
                 "not the same questions")
    print(f"{len(common)} questions; trained = {args.trained}:{args.trained_row}, constant = "
          f"{args.constant}:{args.constant_row}")
    print(f"{'measure':<10} {'trained':>18} {'constant':>18} {'trained - constant':>28}")
    for name, key, scale in MEASURES:
        x = [float(a[i]["row"][key]) * scale for i in common]
        y = [float(b[i]["row"][key]) * scale for i in common]
        (mx, cx), (my, cy) = mean_interval(x), mean_interval(y)
        d, cd = paired_difference(x, y)
        show = lambda m, c: f"{m:8.3f} ({c[0]:.3f}..{c[1]:.3f})" if c else f"{m:8.3f}"  # noqa: E731
        print(f"{name:<10} {show(mx, cx):>18} {show(my, cy):>18} {show(d, cd):>28}")
    kinds: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for i in common:
        kinds[a[i]["row"]["kind"]].append((a[i]["row"]["agree"], b[i]["row"]["agree"]))
    print("agreement by type (trained / constant):")
    for kind, pairs in sorted(kinds.items()):
        print(f"  {kind:<14} {sum(p for p, _ in pairs):3d} / {sum(q for _, q in pairs):3d} of {len(pairs)}")


if __name__ == "__main__":
    main()
