#!/usr/bin/env python3
"""Time to first token of a second question about the same image, with the Pipeline's embedding cache off and on.

  python scripts/bench_embedding_cache.py            # the default model, atp_cli/examples/shapes.png, 5 questions

Each configuration warms up with one question, then asks another question about the same image --runs times;
medians of time to first token and of encode time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a converted folder (default: the default model)")
    ap.add_argument("--image", type=Path, default=ROOT / "atp_cli" / "examples" / "shapes.png")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from atp_cli import ContextConfig, Pipeline, PipelineConfig, build_default_model, cpu, load_image
    from atp_cli.default_model import DEFAULT_DIR
    from atp_cli.runtime.log import quiet_llama_logs

    quiet_llama_logs()
    folder = args.model or build_default_model(DEFAULT_DIR)
    image = load_image(args.image)
    print(f"{cpu.describe()}; {folder}; {args.image.name}; median of {args.runs} second questions\n")
    print("| embedding cache | time to first token s | encode s |\n|---|---|---|")
    for size in (0, 64 * 2**20):
        cfg = PipelineConfig(context=ContextConfig(n_ctx=1024), max_tokens=8, embedding_cache_bytes=size)
        with Pipeline.from_dir(folder, "atp", cfg) as pipe:
            pipe(image, "What colour is the triangle?")
            runs = [pipe(image, "Is there a red circle?") for _ in range(args.runs)]
        ttft = statistics.median(r.first_token_seconds for r in runs)
        enc = statistics.median(r.encode_seconds for r in runs)
        print(f"| {'on (64 MiB)' if size else 'off'} | {ttft:.3f} | {enc:.3f} |")


if __name__ == "__main__":
    main()
