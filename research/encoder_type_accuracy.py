"""Does the encoder's weight type change the default model's answers? Paired comparison of `none` rows.

Reads the per-question records of `atp bench quality` runs that asked the same questions with every visual token,
one per encoder type (the f16 run's records may hold more questions and rows), and prints accuracy, agreement with
the f16 answers, and the paired 95 % interval of the accuracy difference.

  python research/encoder_type_accuracy.py F16_RUN_DIR BF16_RUN_DIR Q8_RUN_DIR -n 120
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atp_cli.bench.fidelity import mean_interval, paired_difference  # noqa: E402
from atp_cli.data.scenes import normalise  # noqa: E402


def none_records(run: Path, n: int) -> dict[int, dict]:
    recs = {}
    for line in (run / "run" / "records.jsonl").read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if r.get("row") == "none" and r["i"] < n:
            recs[r["i"]] = r
    if len(recs) < n:
        raise SystemExit(f"{run} holds {len(recs)} of the first {n} questions' unpruned answers")
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="the f16 run first")
    ap.add_argument("-n", type=int, default=120)
    args = ap.parse_args()
    base = none_records(args.runs[0], args.n)
    print("| encoder | accuracy % (95 % interval) | answers equal to f16's % | accuracy minus f16 (points, paired) |")
    print("|---|---|---|---|")
    for run in args.runs:
        recs = none_records(run, args.n)
        ok = [bool(recs[i]["correct"]) for i in range(args.n)]
        ref = [bool(base[i]["correct"]) for i in range(args.n)]
        acc, ci = mean_interval(ok)
        same = sum(normalise(recs[i]["answer"]) == normalise(base[i]["answer"]) for i in range(args.n)) / args.n
        diff, dci = paired_difference([float(x) for x in ok], [float(x) for x in ref])
        dci_s = f"{100 * dci[0]:.1f}..{100 * dci[1]:.1f}" if dci else "-"
        ci_s = f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}" if ci else "-"
        print(f"| {run.name} | {100 * acc:.1f} ({ci_s}) | {100 * same:.1f} | {100 * diff:+.1f} ({dci_s}) |")


if __name__ == "__main__":
    main()
