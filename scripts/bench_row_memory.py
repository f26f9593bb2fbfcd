#!/usr/bin/env python3
"""Memory per row of the speed benchmark: each configuration alone in a fresh process, its peak RSS and KV.

`atp bench speed` keeps every row's contexts alive at once, so its RSS is the process's; here each row (stock, atp's
schedule, the hybrid, at the given budgets) loads the random model and encoder in its own process, answers once
(image encoded, prompt prefilled, 32 tokens decoded) and reports its peak resident memory and its KV cache allocated
and in use. Memory does not depend on a quiet machine; the timings of this script are not reported.

  python scripts/bench_row_memory.py --shape 7b --budgets 144,64 --n-ctx 4096 1024
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_row(shape: str, budgets: tuple[float, ...], n_ctx: int, index: int, queue) -> None:
    import numpy as np

    from atp_cli.bench.speed import N_AFTER, N_BEFORE, SHAPES, bench_image, config_makers, random_clip_l_mmproj, \
        random_model, timed_ttft_run
    from atp_cli.paths import cache_dir
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.runtime.model import LlamaModel
    from atp_cli.runtime.vision import ImageEncoder

    workdir = cache_dir("bench")
    model_path = random_model(workdir, shape)
    model = LlamaModel(model_path)
    encoder = ImageEncoder(random_clip_l_mmproj(workdir, SHAPES[shape][0].n_embd), model, 0)
    ctx = ContextConfig(n_ctx=n_ctx, n_batch=512, n_ubatch=512)
    rng = np.random.default_rng(0)
    text = (rng.integers(3, model.n_vocab, N_BEFORE), rng.integers(3, model.n_vocab, N_AFTER))
    cfg = config_makers(model, model_path, encoder.n_tokens(), ctx, budgets, text[1])[index]()  # this row alone
    run = timed_ttft_run(cfg, encoder, bench_image(), text)
    queue.put({"config": cfg.name, "kind": cfg.kind, "budget": cfg.budget, "n_ctx": n_ctx,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "kv_alloc_mib": run["kv_alloc_mib"], "kv_used_mib": run["kv_used_mib"]})


def main() -> None:
    from atp_cli.bench.report import commit, machine
    from atp_cli.bench.speed import SHAPES, row_plan
    from atp_cli.cli_types import comma_floats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--budgets", default="144,64")
    ap.add_argument("--n-ctx", type=int, nargs="+", default=[4096, 1024])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        budgets = tuple(comma_floats(args.budgets))
    except click.BadParameter as e:  # one line, not a traceback
        raise SystemExit(f"--budgets: {e.message}") from None
    rows = []
    spawn = mp.get_context("spawn")
    for n_ctx in args.n_ctx:
        for index in range(len(row_plan(budgets, SHAPES[args.shape][0].n_layer))):
            queue = spawn.Queue()
            proc = spawn.Process(target=one_row, args=(args.shape, budgets, n_ctx, index, queue))
            proc.start()
            rows.append(queue.get())
            proc.join()
    for r in rows:
        stock = next(s for s in rows if s["kind"] == "stock" and s["n_ctx"] == r["n_ctx"])
        r["kv_alloc_vs_stock"] = r["kv_alloc_mib"] / stock["kv_alloc_mib"]
        r["rss_vs_stock"] = r["peak_rss_mib"] / stock["peak_rss_mib"]
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "commit": commit(), "shape": args.shape,
                                         "rows": rows}, indent=1))
    print(f"| {args.shape} shape: row, alone in its process | n_ctx | KV allocated MiB | / stock | KV in use after 32 "
          "decoded tokens MiB | peak RSS MiB | / stock |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['n_ctx']} | {r['kv_alloc_mib']:.0f} | {r['kv_alloc_vs_stock']:.2f} | "
              f"{r['kv_used_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['rss_vs_stock']:.2f} |")


if __name__ == "__main__":
    main()
