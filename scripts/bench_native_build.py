#!/usr/bin/env python3
"""Two builds of the native library side by side: prefill and decode speed of the same model and prompt.

Each build is a folder of llama-cpp-python's shared libraries (`llama_cpp/lib` of an installed or unpacked
wheel); every measurement runs in a fresh process that loads that folder (LLAMA_CPP_LIB_PATH), and the builds
take turns inside each round, so drift of the machine hits both alike. Prints medians and the ratio of each
build against the first, with the CPU model, its instruction sets and the CPU variant each build loaded.

  python scripts/bench_native_build.py            # the installed (portable) build against a native build of it
  python scripts/bench_native_build.py --lib native=/tmp/native/llama_cpp/lib --lib portable=.venv/lib/.../lib
  python scripts/bench_native_build.py --lib a=DIR --lib b=DIR --models smollm2 --rounds 3 --json out.json

Without --lib, the native build is made once by `native_patch/build_wheel.py --native` (cached like every wheel;
about 5 minutes) and unpacked into the bench cache. On a CPU with AMX that build takes ggml's AMX path and may
crash: its row then says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_PROMPT, N_DECODE = 512, 32


def measure(model_path: str, threads: int, repeats: int) -> dict:
    """In this process: prefill N_PROMPT tokens and decode N_DECODE greedily, `repeats` times; the best of each."""
    import numpy as np

    from atp_cli.driver import SegmentedDecoder
    from atp_cli.prompt_input import Prompt, Span
    from atp_cli.runtime import backend
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.runtime.log import quiet_llama_logs
    from atp_cli.runtime.model import LlamaModel

    quiet_llama_logs()
    cfg = ContextConfig(n_ctx=N_PROMPT + N_DECODE + 16, n_batch=N_PROMPT, n_ubatch=N_PROMPT, n_threads=threads)
    prefill, decode = [], []
    with LlamaModel(model_path) as model:
        tokens = np.random.default_rng(0).integers(10, model.n_vocab - 10, N_PROMPT).astype(np.int32)
        prompt = Prompt((Span.text(tokens),))
        with SegmentedDecoder(model, (), cfg, readout=False, stock=True) as dec:
            for _ in range(repeats):
                dec.reset()
                t0 = time.perf_counter()
                logits = dec.prefill(prompt)
                t1 = time.perf_counter()
                for _ in range(N_DECODE):
                    logits = dec.extend([int(np.argmax(logits))])
                t2 = time.perf_counter()
                prefill.append(t1 - t0)
                decode.append(t2 - t1)
    be = backend.cpu_backend()
    return {"prefill_s": min(prefill), "decode_s": min(decode), "variant": be.variant or "single build",
            "features": be.enabled_features()}


def model_file(name: str) -> Path:
    if name == "smollm2":
        from atp_cli.assets import smollm2_gguf

        return smollm2_gguf()
    if name == "1b":
        from atp_cli.bench.speed import random_model
        from atp_cli.paths import cache_dir

        workdir = cache_dir("bench")
        workdir.mkdir(parents=True, exist_ok=True)
        return random_model(workdir, "1b")
    return Path(name)


def default_builds() -> list[tuple[str, Path]]:
    """native (built for this CPU) against the installed wheel's libraries."""
    import zipfile

    from atp_cli.paths import cache_dir
    from atp_cli.runtime.backend import lib_dir

    done = subprocess.run([sys.executable, str(ROOT / "native_patch" / "build_wheel.py"), "--native"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the native build failed:\n{done.stderr[-2000:]}")
    wheel = Path(done.stdout.strip().splitlines()[-1])
    target = cache_dir("bench") / f"native-{wheel.parent.name}"
    if not (target / "llama_cpp" / "lib" / "libllama.so").is_file():
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target, [n for n in z.namelist() if n.startswith("llama_cpp/lib/")])
    return [("native", target / "llama_cpp" / "lib"), ("portable", lib_dir())]


def run_worker(lib: Path, model: Path, threads: int, repeats: int) -> dict:
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(lib), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--worker", str(model), "--threads", str(threads), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # e.g. a native build that takes the AMX path on Sapphire Rapids
        print(f"worker for {lib} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        return {"prefill_s": float("nan"), "decode_s": float("nan"), "variant": f"crashed ({done.returncode})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", action="append", default=[], metavar="NAME=DIR", help="a build's library folder")
    ap.add_argument("--models", default="smollm2,1b", help="smollm2 (packaged 135M Q4_1), 1b (random ~1.1B "
                    "Q4_K_M, built once into the bench cache), or GGUF paths; comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="measurements per process (the best is kept)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.threads, args.repeats)))
        return
    if any("=" not in item for item in args.lib):
        ap.error("--lib takes NAME=DIR")
    builds = [(name, Path(path)) for name, path in (item.split("=", 1) for item in args.lib)] or default_builds()
    if len(builds) < 2:
        raise SystemExit("give at least two --lib NAME=DIR (or none: native against the installed build)")
    from atp_cli import cpu

    rows = []
    print(f"{N_PROMPT}-token prefill and {N_DECODE} decoded tokens, median of {args.rounds} rounds (best of "
          f"{args.repeats} per process), on {cpu.describe()}.\n")
    print(f"| model | build | CPU variant | prefill tok/s | prefill vs {builds[0][0]} | decode tok/s | "
          f"decode vs {builds[0][0]} |\n|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        model = model_file(model_name)
        samples: dict[str, list[dict]] = {name: [] for name, _ in builds}
        for r in range(args.rounds):
            order = builds[r % len(builds):] + builds[:r % len(builds)]  # rotate who goes first
            for name, lib in order:
                samples[name].append(run_worker(lib, model, args.threads, args.repeats))
        base = None
        for name, _ in builds:
            pre = statistics.median(s["prefill_s"] for s in samples[name])
            dec = statistics.median(s["decode_s"] for s in samples[name])
            row = {"model": model_name, "build": name, "variant": samples[name][0]["variant"],
                   "prefill_tok_s": N_PROMPT / pre, "decode_tok_s": N_DECODE / dec}
            base = base or row
            row["prefill_ratio"] = row["prefill_tok_s"] / base["prefill_tok_s"]
            row["decode_ratio"] = row["decode_tok_s"] / base["decode_tok_s"]
            rows.append(row)
            print(f"| {model_name} | {name} | {row['variant']} | {row['prefill_tok_s']:.1f} | "
                  f"{row['prefill_ratio']:.3f} | {row['decode_tok_s']:.2f} | {row['decode_ratio']:.3f} |", flush=True)
    if args.json:
        tmp = args.json.with_name(args.json.name + ".part")
        tmp.write_text(json.dumps({"machine": cpu.describe(), "rows": rows}, indent=2))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
