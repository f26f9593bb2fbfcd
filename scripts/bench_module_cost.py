#!/usr/bin/env python3
"""Cost of a pruning module next to a decoder layer, on SmolLM2-135M with 576 visual rows.

Module time = the driver's time from the captured attention to the keep set (cell mapping, score maths,
threshold MLP, keep rule). Layer time = unpruned prefill time / number of layers. Medians of --runs runs.

  python scripts/bench_module_cost.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.assets import smollm2_gguf  # noqa: E402
from atp_cli.driver import SegmentedDecoder  # noqa: E402
from atp_cli.pruning.atp import ThresholdMLP  # noqa: E402
from atp_cli.pruning.config import N_FEATURES  # noqa: E402
from atp_cli.pruning.registry import make_strategy  # noqa: E402
from atp_cli.pruning.store import AtpWeights  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.runtime.log import quiet_llama_logs  # noqa: E402
from atp_cli.runtime.model import LlamaModel  # noqa: E402
from scripts.bench_runtime import make_prompt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    quiet_llama_logs()
    model = LlamaModel(smollm2_gguf())
    prompt = make_prompt(model, np.random.default_rng(0))
    cfg = ContextConfig(n_ctx=1024)
    free = make_strategy("atp-free", model.n_layer, 576)
    rng = np.random.default_rng(0)
    mlps = tuple(ThresholdMLP(rng.standard_normal((64, N_FEATURES)) * 0.1, np.zeros(64),
                              rng.standard_normal((2, 64)) * 0.1, np.array([0.3, 0.0])) for _ in free.config.boundaries)
    strategies = {"atp": make_strategy("atp", model.n_layer, 576, AtpWeights(free.config, mlps)), "atp-free": free,
                  "fastv": make_strategy("fastv", model.n_layer, 576), "pdrop": make_strategy("pdrop", model.n_layer, 576)}
    with SegmentedDecoder(model, (), cfg, readout=False) as plain:
        layer_ms = statistics.median(_prefill(plain, prompt, None) for _ in range(args.runs)) / model.n_layer * 1e3
    print(f"SmolLM2-135M, {len(prompt)} prompt entries (576 visual): one decoder layer = {layer_ms:.1f} ms "
          f"(unpruned prefill / {model.n_layer})\n")
    print("| strategy | modules | module ms (median) | module / layer |\n|---|---|---|---|")
    for name, strategy in strategies.items():
        with SegmentedDecoder(model, strategy.boundaries(model.n_layer), cfg) as dec:
            times = []
            for _ in range(args.runs):
                dec.reset()
                dec.prefill(prompt, strategy)
                times += dec.stats.module_seconds
        ms = statistics.median(times) * 1e3
        print(f"| {name} | {len(strategy.boundaries(model.n_layer))} | {ms:.2f} | {ms / layer_ms:.3f} |")


def _prefill(dec: SegmentedDecoder, prompt, keep) -> float:
    dec.reset()
    dec.prefill(prompt, keep)
    return dec.stats.prefill_seconds


if __name__ == "__main__":
    main()
