#!/usr/bin/env python3
"""Exact-match accuracy of a converted model folder on a generated split, per strategy and question type.

  python scripts/eval_model.py ~/.cache/atp/default-model data/val.jsonl --limit 60 --strategies none,atp-free
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.evaluation import evaluate, load_split  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.runtime.log import quiet_llama_logs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--strategies", default="none,atp-free,fastv")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    quiet_llama_logs()
    rows = load_split(args.data, args.limit)
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024), max_tokens=8)
    show = (lambda s, r, t, ok: print(f"{s:10s} {ok!s:5s} {r['question'][:50]!r} -> {t!r} (gold {r['answer']!r})",
                                      flush=True)) if args.verbose else None
    with Pipeline.from_dir(args.folder, "none", cfg) as pipe:
        scores = evaluate(pipe, rows, args.strategies.split(","), show)
    kinds = sorted({k for s in scores for k in s.by_kind})
    print(f"\n{len(rows)} examples of {args.data}\n")
    print("| strategy | visual tokens (avg over layers) | accuracy | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for s in scores:
        cells = " | ".join(f"{s.by_kind[k][0]}/{s.by_kind[k][1]}" for k in kinds)
        print(f"| {s.strategy} | {s.tokens_avg:.0f} | {100 * s.accuracy:.1f} % | {cells} |")


if __name__ == "__main__":
    main()
