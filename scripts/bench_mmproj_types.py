#!/usr/bin/env python3
"""The image encoder at f16, q8_0 and bf16: encode time side by side, threads, and how close the embeddings stay to f16.

Two towers: a random CLIP ViT-L/14 at 336 px (LLaVA-1.5's tower; projector to the ~1.1B shape's 2048 features: the
projector is a small part of the work) and the default model's DINOv2 ViT-S/14 at 336 px with its trained projector.
Each mmproj is written by atp convert's writer; the encoders take turns in every round, at one thread and at every
core, and the cosine of each projected row against f16's is taken on the same images.

  python scripts/bench_mmproj_types.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.bench.contention import ContentionWatch  # noqa: E402
from atp_cli.bench.report import commit, machine  # noqa: E402
from atp_cli.cpu import usable_cores  # noqa: E402

TYPES = ("f16", "q8_0", "bf16")


def towers(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint folder with the tower + projector, a language-model GGUF of the projector's width)."""
    from atp_cli.bench.speed import random_clip_checkpoint, random_model
    from atp_cli.default_model import DEFAULT_DIR, PROJECTOR, build_default_model, text_config, write_tower_checkpoint
    from atp_cli.model_files import find_pair
    from atp_cli.paths import cache_dir

    default_llm, _ = find_pair(build_default_model(DEFAULT_DIR))
    workdir = cache_dir("bench")
    workdir.mkdir(parents=True, exist_ok=True)
    small = random_model(workdir, "1b")
    return {
        "CLIP ViT-L/14-336 (random) -> 2048": (random_clip_checkpoint(tmp / "clip", 2048), small),
        "default model: DINOv2 ViT-S/14-336 -> 576": (
            write_tower_checkpoint(tmp / "dinov2", PROJECTOR, text_config(default_llm)), default_llm),
    }


def images(n: int) -> list:
    from PIL import Image

    from atp_cli.data.scenes import make_example

    out = [make_example("val", i).image for i in range(n - 1)]
    return out + [Image.open(ROOT / "atp_cli" / "examples" / "sunset.png")]


def bench_tower(ckpt: Path, llm: Path, tmp: Path, rounds: int) -> list[dict]:
    from atp_cli.runtime.model import LlamaModel
    from atp_cli.runtime.vision import ImageEncoder
    from converters.checkpoint import open_checkpoint
    from converters.mmproj import write_mmproj

    checkpoint = open_checkpoint(ckpt)
    files = {}
    for t in TYPES:
        files[t] = tmp / f"{ckpt.name}-{t}.gguf"
        write_mmproj(checkpoint, files[t], image_size=336, keep_cls=False, dtype=t)
    pics = images(4)
    cores = usable_cores()
    rows = []
    with LlamaModel(llm) as model:
        encoders = {(t, n): ImageEncoder(files[t], model, n) for t in TYPES for n in sorted({1, cores})}
        try:
            embeddings = {t: [encoders[(t, cores)].encode(p) for p in pics] for t in TYPES}
            times: dict = {key: [] for key in encoders}
            for r in range(rounds):
                order = list(encoders)
                for key in order[r % len(order):] + order[:r % len(order)]:
                    t0 = time.perf_counter()
                    encoders[key].encode(pics[0])
                    times[key].append(time.perf_counter() - t0)
        finally:
            for enc in encoders.values():
                enc.close()
    for t in TYPES:
        cos = np.concatenate([(a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                              for a, b in zip(embeddings[t], embeddings["f16"])])
        one, all_ = statistics.median(times[(t, 1)]), statistics.median(times[(t, cores)])
        rows.append({"type": t, "file_mib": files[t].stat().st_size / 2**20, "encode_1_thread_s": one,
                     f"encode_{cores}_threads_s": all_, "thread_speedup": one / all_,
                     "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())})
    base = rows[0]
    for r in rows:
        r["encode_vs_f16"] = base[f"encode_{cores}_threads_s"] / r[f"encode_{cores}_threads_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cores = usable_cores()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, ContentionWatch() as watch:
        for name, (ckpt, llm) in towers(Path(tmp)).items():
            results[name] = bench_tower(ckpt, llm, Path(tmp), args.rounds)
    payload = {"machine": machine(), "commit": commit(), "rounds": args.rounds, "contention": watch.result.as_dict(),
               "results": results}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1))
    print(f"| tower -> projector width | mmproj | file MiB | encode s, 1 thread | encode s, {cores} threads | "
          f"{cores} threads / 1 | encode speed-up vs f16 | cosine vs f16, min / mean |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['type']} | {r['file_mib']:.0f} | {r['encode_1_thread_s']:.3f} | "
                  f"{r[f'encode_{cores}_threads_s']:.3f} | {r['thread_speedup']:.2f}x | {r['encode_vs_f16']:.2f}x | "
                  f"{r['cosine_min']:.4f} / {r['cosine_mean']:.4f} |")
    for w in watch.result.warnings():
        print(f"\n**Warning:** {w}.")


if __name__ == "__main__":
    main()
