#!/usr/bin/env python3
"""Merge `atp bench quality` runs over the same questions (e.g. budgets run separately) into one report: the rows
of every run, the unpruned and blind rows once; writes quality.json, quality.md and the plots into --out.

  python scripts/combine_quality.py RUN_A/quality.json RUN_B/quality.json --out docs/bench/fidelity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.bench import report  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402


def merge(payloads: list[dict]) -> list[dict]:
    """Rows of all runs; a row (strategy, budget) seen twice must be the same measurement (same answers)."""
    rows: dict[tuple, dict] = {}
    first = payloads[0]["rows"][0]["answers"]  # the unpruned row comes first in every run
    for p in payloads:
        if p["rows"][0]["answers"] != first:
            raise InputError("the runs are not of the same questions (their unpruned answers differ)")
        for r in p["rows"]:
            key = (r["strategy"], r["budget"])
            if key in rows and rows[key]["answers"] != r["answers"]:
                raise InputError(f"row {key} differs between runs")
            rows.setdefault(key, r)
    tail = [k for k in rows if k[0].startswith("blind")]
    return [rows[k] for k in rows if k not in tail] + [rows[k] for k in tail]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title")
    args = ap.parse_args()
    payloads = [json.loads(p.read_text()) for p in args.runs]
    rows = merge(payloads)
    title = args.title or payloads[0]["title"]
    report.write_json(args.out / "quality.json", {"machine": payloads[0]["machine"], "title": title,
                                                  "runs": [{"file": str(p), "commit": q.get("commit")}
                                                           for p, q in zip(args.runs, payloads)],
                                                  "chance": report.chance_by_kind(rows), "rows": rows})
    text = "\n\n".join([title, report.fidelity_table(rows), report.kind_table(rows), report.adaptivity_table(rows)])
    report.write_atomic(args.out / "quality.md", text + "\n")
    for plot in report.quality_plots(rows, args.out, title):
        print(plot)
    print(args.out / "quality.json")


if __name__ == "__main__":
    main()
