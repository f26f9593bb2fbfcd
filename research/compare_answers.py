"""Two rows of `atp bench quality` output compared question by question, with the split they answered.

  python research/compare_answers.py --data OUT/data-test-mix/test.jsonl \
      docs/bench/test-300/quality.json:atp docs/bench/test-300/quality.json:none --kind fashion_count

Runs over consecutive blocks of a split (`atp data --start`, then `atp bench quality --data`) combine: give each
block's JSONL to its own --data, in order, and each row's runs in the same order, joined by commas
(`a.json,b.json:atp`).

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


def row_of(path: str, strategy: str) -> dict:
    """The row of `strategy` in one `atp bench quality` JSON file."""
    rows = json.loads(Path(path).read_text())["rows"]
    match = [r for r in rows if r["strategy"] == strategy]
    if not match:
        raise SystemExit(f"{path} has no row {strategy!r} (it has {[r['strategy'] for r in rows]})")
    return match[0]


def rows_of(spec: str) -> list[dict]:
    """`A.json[,B.json...]:STRATEGY` -> that strategy's row in each file, one per block of questions."""
    paths, _, strategy = spec.rpartition(":")
    return [row_of(path, strategy) for path in paths.split(",")]


def answered(data: list[Path], spec: str, ref_spec: str) -> tuple[list[dict], list[str], list[str]]:
    """(questions, the row's answers, the reference's answers) over every block, in order; each block holds as
    many questions as both rows answered of it."""
    rows, refs = rows_of(spec), rows_of(ref_spec)
    if not len(rows) == len(refs) == len(data):
        raise SystemExit(f"{len(data)} --data files but {len(rows)} and {len(refs)} runs per row: give one per block")
    questions, ours, theirs = [], [], []
    for path, row, ref in zip(data, rows, refs):
        n = min(row["n"], ref["n"])
        block = load_split(path, n, check_images=False)  # stored answers: the images may be long gone
        if len(block) < n:
            raise SystemExit(f"{path} holds {len(block)} records, the rows answered {n}")
        questions += block
        ours += row["answers"][:n]
        theirs += ref["answers"][:n]
    return questions, ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", required=True,
                    help="the LLaVA JSONL both rows answered (first questions); repeated: one per block, in order")
    ap.add_argument("rows", nargs=2, metavar="FILE.json[,FILE.json]:STRATEGY",
                    help="the row to compare, then the reference row")
    ap.add_argument("--kind", help="also list the answers given to this question type")
    args = ap.parse_args()
    label, ref_label = args.rows
    questions, answers, ref_answers = answered(args.data, label, ref_label)
    ours = [exact_match(a, q["answer"]) for a, q in zip(answers, questions)]
    theirs = [exact_match(a, q["answer"]) for a, q in zip(ref_answers, questions)]
    print(f"{len(questions)} questions: {label} {sum(ours)} right, {ref_label} {sum(theirs)} right")
    print(f"right only for the first: {sum(a and not b for a, b in zip(ours, theirs))}, "
          f"only for the reference: {sum(b and not a for a, b in zip(ours, theirs))}")
    retained, ci = paired_retention(ours, theirs)
    if retained is not None:
        interval = f", 95 % interval {100 * ci[0]:.1f}-{100 * ci[1]:.1f} %" if ci else ""
        print(f"retained {100 * retained:.1f} %{interval}")
    if args.kind:
        for name, given in ((label, answers), (ref_label, ref_answers)):
            tally = Counter(a for a, q in zip(given, questions) if q["kind"] == args.kind)
            print(f"{name} on {args.kind}: {dict(tally.most_common())}")
        gold = Counter(q["answer"] for q in questions if q["kind"] == args.kind)
        print(f"right answers on {args.kind}: {dict(gold.most_common())}")
        for name, given in ((label, answers), (ref_label, ref_answers)):
            words = word_matches(given, questions, args.kind)
            if words:
                print(f"{name} on {args.kind}, each word of a two-word answer right: {words}")


def word_matches(given: list[str], questions: list[dict], kind: str) -> str | None:
    """For a type whose answers are two words (a place: 'top left'), how often each word was right - e.g. the
    vertical half of a place read and the horizontal one not; None for other types."""
    pairs = [(a.lower().split(), q["answer"].lower().split()) for a, q in zip(given, questions)
             if q["kind"] == kind]
    if not pairs or any(len(g) != 2 for _, g in pairs):
        return None
    right = [sum(len(a) == 2 and a[i] == g[i] for a, g in pairs) for i in range(2)]
    return f"first {right[0]}/{len(pairs)}, second {right[1]}/{len(pairs)}"


if __name__ == "__main__":
    main()
