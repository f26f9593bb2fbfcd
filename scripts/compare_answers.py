"""Two rows of `atp bench quality` output compared question by question, with the split they answered.

  python scripts/compare_answers.py --data OUT/data-test-mix/test.jsonl \
      docs/bench/test-300/quality.json:atp docs/bench/test-300/quality.json:none --kind fashion_count

Prints each row's accuracy, the questions only one of them gets right, the first row's accuracy as a share of the
second's with its paired bootstrap interval (`atp_cli.bench.quality.paired_retention`), and with --kind the answers
each row gave to that question type. Rows may come from different runs (another model on the same questions);
the answers are scored against --data, so files written before `correct` was recorded compare too.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from atp_cli.bench.quality import paired_retention
from atp_cli.data.scenes import exact_match
from atp_cli.evaluation import load_split


def row_of(spec: str) -> tuple[str, dict]:
    """`FILE.json:STRATEGY` -> (label, the row of that strategy)."""
    path, _, strategy = spec.rpartition(":")
    rows = json.loads(Path(path).read_text())["rows"]
    match = [r for r in rows if r["strategy"] == strategy]
    if not match:
        raise SystemExit(f"{path} has no row {strategy!r} (it has {[r['strategy'] for r in rows]})")
    return spec, match[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the LLaVA JSONL both rows answered (first questions)")
    ap.add_argument("rows", nargs=2, metavar="FILE.json:STRATEGY", help="the row to compare, then the reference row")
    ap.add_argument("--kind", help="also list the answers given to this question type")
    args = ap.parse_args()
    (label, row), (ref_label, ref) = (row_of(s) for s in args.rows)
    n = min(row["n"], ref["n"])
    questions = load_split(args.data, n)
    if len(questions) < n:
        raise SystemExit(f"{args.data} holds {len(questions)} records, the rows answered {n}")
    ours = [exact_match(a, q["answer"]) for a, q in zip(row["answers"], questions)]
    theirs = [exact_match(a, q["answer"]) for a, q in zip(ref["answers"], questions)]
    print(f"{n} questions: {label} {sum(ours)} right, {ref_label} {sum(theirs)} right")
    print(f"right only for the first: {sum(a and not b for a, b in zip(ours, theirs))}, "
          f"only for the reference: {sum(b and not a for a, b in zip(ours, theirs))}")
    retained, ci = paired_retention(ours, theirs)
    if retained is not None:
        print(f"retained {100 * retained:.1f} %" + (f", 95 % interval {100 * ci[0]:.1f}-{100 * ci[1]:.1f} %" if ci else ""))
    if args.kind:
        for name, r in ((label, row), (ref_label, ref)):
            answers = Counter(a for a, q in zip(r["answers"], questions) if q["kind"] == args.kind)
            print(f"{name} on {args.kind}: {dict(answers.most_common())}")
        gold = Counter(q["answer"] for q in questions if q["kind"] == args.kind)
        print(f"right answers on {args.kind}: {dict(gold.most_common())}")


if __name__ == "__main__":
    main()
