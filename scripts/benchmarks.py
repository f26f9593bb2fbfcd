#!/usr/bin/env python3
"""Regenerate docs/BENCHMARKS.md: run every benchmark (or --only some), keep each section's output under
docs/bench/, and compose the page from all sections present, each with its command and machine.

  python scripts/benchmarks.py                     # everything (about an hour on 2 cores)
  python scripts/benchmarks.py --only speed,quality
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.bench.report import commit, machine, write_atomic  # noqa: E402

OUT = ROOT / "docs" / "bench"
PY = str(Path(sys.executable))
ATP = [PY, "-m", "atp_cli.cli"]


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    command: list[str]
    intro: str
    table: str | None = None  # markdown file the command writes (else its stdout is the table)


FIDELITY_RUNS = ("docs/bench/fidelity/runs/v2-600-main.json", "docs/bench/fidelity/runs/v2-600-free.json")

SECTIONS = [
    Section("fidelity", "The decisive comparison: fidelity to the unpruned model at 144, 64 and 32 visual tokens",
            [PY, "scripts/combine_quality.py", *FIDELITY_RUNS, "--out", "docs/bench/fidelity"],
            "Balanced held-out test questions of the default model of commit 2df3534, before its stages 2b and 2c "
            "(the current model is measured on the same 600 questions in `docs/TRAINING.md`); every answer of a "
            "type is equally likely, so the blind row scores chance per type; the test split tunes nothing. "
            "600 questions, each type 50 times "
            "(the run went in resumable chunks over several sittings: the same commands with `--resume`). "
            "Commands: `atp bench quality --split test --source mix -n 600 --strategies none,atp,"
            "hybrid,cdpruner,dart,fastv,pdrop,visionzip-style,uniform,random --budgets 144,64,32 --calibration "
            "cal/val.jsonl --no-peer --threads 1 --out docs/bench/fidelity/runs/v2-main` and `--strategies none,"
            "atp-free --budgets 144,64 --no-blind --out docs/bench/fidelity/runs/v2-free` (atp-free's first module "
            "is at layer 2 of 30, whose two full layers alone average 38.4 tokens, so it has no row at 32). atp runs "
            "its own thresholds (148 tokens) and the operating points stored with the model at 144, 64 and 32; "
            "calibration: 6 validation questions (`atp data cal --split val -n 6 --source mix`). "
            "Agreement: the greedy answer equals the unpruned one; KL: KL(unpruned || row) of the first answer "
            "token's distribution, in nats; top-1: the most likely first token is the unpruned one. Intervals: 95 % "
            "paired bootstrap over the questions; `vs`: each row minus the atp (or hybrid) row nearest in tokens, "
            "with * where the interval excludes 0.",
            "docs/bench/fidelity/quality.md"),
    Section("quality", "Accuracy and cost on the default model: strategies at an equal budget, and the stock peer",
            [*ATP, "bench", "quality", "--split", "test", "--source", "mix", "-n", "60", "--budgets", "144",
             "--calibration", "docs/bench/quality-calibration/val.jsonl", "--out", "docs/bench/quality"],
            "Held-out test split of generated scenes and Fashion-MNIST mosaics (never used to train or tune). `budget` is the target of "
            "visual tokens averaged over all decoder layers (paper metric): fixed-rule strategies meet it by "
            "construction (atp_cli/pruning/budget.py), atp-free is calibrated to it on 6 validation questions, atp "
            "(the model's own modules) sits at the budget its thresholds were set for. Agreement: the answer equals "
            "the unpruned atp answer. The stock row is llama-cpp-python's own LLaVA chat handler on the same files "
            "and threads (its encoder and "
            "prefill happen inside one call, so only its time to first token is known). Times are medians over the "
            "questions; accuracy per question type as correct/total.",
            "docs/bench/quality/quality.md"),
    Section("speed", "Speed at real scale (random weights, speed only)",
            [*ATP, "bench", "speed", "--shapes", "7b,1b", "--budgets", "144,64,32", "--runs", "3", "--out",
             "docs/bench/speed"],
            "Random-weight Q4_K_M GGUFs with the decoder shape of LLaVA-1.5-7B and of a ~1.1B llama, and a random CLIP "
            "ViT-L/14 at 336 px (LLaVA-1.5's tower, f16 mmproj) encoding the image in every run, so time to first "
            "token includes the encoder. Rows: stock llama.cpp with all 576 visual tokens; then at each budget (visual "
            "tokens averaged over the decoder layers: 144, 64, 32) stock llama.cpp given that many visual tokens (the "
            "limit any pruning inside the decoder can approach), atp with a fixed keep schedule at ATP's boundaries "
            "whose token-layer average is the budget (k, k/2, k/4 of the visual tokens by text->vision attention; at "
            "32 no such schedule exists, the layers before the first boundary alone average more), and the hybrid: "
            "CDPruner's selection of twice the budget before the language model (timed, in the time to first token) "
            "and the schedule inside it. Answers are meaningless here; only time and memory are measured. Medians of "
            "3 runs; the configurations take turns inside each run; the load and CPU steal of the run are recorded "
            "below the tables. Every row runs at n_ctx 4096: stock allocates the whole KV cache, atp's later segments "
            "what they hold (they start at 256 cells and grow). Peak RSS is the process's, with every row's contexts "
            "alive at once, so it is not a per-row figure; KV allocated is.",
            "docs/bench/speed/speed.md"),
    Section("mmproj", "The image encoder at f16, q8_0 and bf16",
            [PY, "scripts/bench_mmproj_types.py", "--rounds", "5", "--json", "docs/bench/mmproj.json"],
            "`atp convert --mmproj-type q8_0` and `bf16` against the f16 default: the same tower and projector written "
            "each way by atp's mmproj writer (Q8_0 or BF16 for the matrices the encoder multiplies by; the patch "
            "embedding stays F16, norms and positions F32), encoding one image at one thread and at every core, the encoders taking "
            "turns in each of 5 rounds (medians); the cosine of every projected row against f16's over four images. "
            "The CLIP tower is random (speed depends on shapes, not values); the DINOv2 tower is the default "
            "model's, with its trained projector."),
    Section("runtime", "Segment runtime against a stock llama.cpp context",
            [PY, "scripts/bench_runtime.py", "--runs", "5"],
            "Prompt: 10 text tokens, 576 visual embedding rows, 20 text tokens; then 32 greedy decode steps. `stock` "
            "is a plain llama.cpp context; `segments=N` are atp segment contexts with no pruning; `readout` means the "
            "contexts before each boundary run with flash attention off so their attention can be read. The keep "
            "schedules keep the visual tokens the text attends to most. KV used = cells in use x bytes per cell."),
    Section("native_build", "The portable native build against a build for this CPU",
            [PY, "scripts/bench_native_build.py", "--rounds", "5", "--repeats", "3"],
            "The installed wheel (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS without AMX: ggml picks the CPU variant at "
            "run time) against the same sources built with GGML_NATIVE=ON for this machine, on the packaged "
            "SmolLM2-135M (Q4_1) and a random ~1.1B llama (Q4_K_M). Each measurement runs in a fresh process that "
            "loads one build's libraries; the builds take turns inside each round."),
    Section("module_cost", "Cost of a pruning module",
            [PY, "scripts/bench_module_cost.py", "--runs", "5"],
            "Everything between the captured attention and the keep set (cell-to-position mapping, scores, SAP, "
            "threshold MLP, keep rule), median over modules and runs, against one decoder layer of SmolLM2-135M."),
    Section("serve", "`atp serve` under load",
            [PY, "scripts/bench_serve.py", "--clients", "8", "--requests", "25", "--json", "docs/bench/serve/serve.json"],
            "`atp serve` with the default model (1 worker, a queue of 8, answers of at most 8 tokens) and 8 concurrent "
            "clients of the `openai` package sending 25 requests each on loopback: a question about one of the three "
            "example images, every third a follow-up turn of the client's previous conversation. Latency counts from "
            "the request to the whole answer, so it includes the wait behind the other clients' requests (one worker "
            "answers one request at a time); time to first token is the server's own figure. RSS is the server "
            "process's, after a warm-up and after the run, and its peak sampled every 0.5 s in each half of the run. "
            "Follow-ups rarely find their conversation in the caches here: the one worker has answered another "
            "client's question since, so they are rebuilt from their transcripts."),
    Section("convert_memory", "Memory of `atp convert`",
            [PY, "scripts/bench_convert_memory.py", "--layers", "2,4,8", "--outtype", "q4_k_m"],
            "Synthetic llava-hf checkpoints with LLaVA-1.5-7B's tensor shapes and 2, 4 or 8 decoder layers; peaks sampled "
            "over the whole process tree. Flat peak anonymous memory across depths means tensors are streamed."),
]


def run_section(s: Section) -> None:
    if s.name == "quality":
        from atp_cli.data.mix import MIX, write_mixed_split

        write_mixed_split(ROOT / "docs/bench/quality-calibration", "val", 6, MIX)
    print(f"== {s.name}: {shlex.join(s.command)}", flush=True)
    proc = subprocess.run(s.command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"{s.name} failed with exit code {proc.returncode}")
    table = (ROOT / s.table).read_text() if s.table else proc.stdout
    meta = {"command": shlex.join(["python" if c == PY else c for c in s.command]).replace(
        "python -m atp_cli.cli", "atp"), "machine": machine(), "commit": commit()}
    if s.name == "fidelity":  # merged from runs made earlier: their machine and code, not this process's
        runs = [json.loads((ROOT / f).read_text()) for f in FIDELITY_RUNS]
        meta["machine"] = runs[0]["machine"]
        meta["commit"] = " and ".join(dict.fromkeys(r["commit"] for r in runs)) + " (the runs)"
    write_atomic(OUT / f"{s.name}.md", table)
    write_atomic(OUT / f"{s.name}.meta.json", json.dumps(meta))


def targets() -> str:
    """The speed targets, checked against the 7B-shape figures: the best pruned row (atp's schedule or the hybrid)
    at each budget."""
    path = OUT / "speed" / "speed.json"
    if not path.is_file():
        return ""
    res = next((r for r in json.loads(path.read_text())["results"] if r["shape"] == "7b"), None)
    if res is None or "budgets" not in res:
        return ""

    def best(budget: float, key: str) -> tuple[float, str] | None:
        rows = [r for r in res["rows"] if r.get("kind") in ("atp", "hybrid") and r.get("budget") == budget]
        return max(((r[key], r["config"]) for r in rows), default=None)

    checks = [(144, "prefill_vs_stock", "language-model prefill speed-up", 3.0),
              (144, "ttft_vs_stock", "time to first token speed-up (encoder included)", 3.0),
              (64, "prefill_vs_stock", "language-model prefill speed-up", 6.0),
              (64, "ttft_vs_stock", "time to first token speed-up (encoder included)", 4.5)]
    lines = ["| 7B shape, 576 visual tokens | budget | measured (best row) | target | |", "|---|---|---|---|---|"]
    for budget, key, label, goal in checks:
        got = best(budget, key)
        if got is not None:
            lines.append(f"| {label} | {budget} | {got[0]:.2f}x ({got[1]}) | >= {goal} | "
                         f"{'met' if got[0] >= goal else 'missed'} |")
    pruned = [r for r in res["rows"] if r.get("kind") in ("atp", "hybrid")]
    if pruned:
        slowest = min(pruned, key=lambda r: r["decode_vs_stock"])
        lines.append(f"| decode tokens/s / stock, every pruned row | all | {slowest['decode_vs_stock']:.2f} (lowest: "
                     f"{slowest['config']}) | >= 0.95 (never slower, within run-to-run noise) | "
                     f"{'met' if slowest['decode_vs_stock'] >= 0.95 else 'missed'} |")
    return "\n".join(lines)


def compose() -> str:
    parts = ["# Benchmarks", "",
             "Generated by `python scripts/benchmarks.py` (sections can be re-run alone with `--only NAME`). Every "
             "figure is a median of several runs; each ratio compares runs made side by side in one process.", ""]
    for s in SECTIONS:
        md, meta_path = OUT / f"{s.name}.md", OUT / f"{s.name}.meta.json"
        if not md.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        threads = ("1 llama.cpp thread, beside other work on the other core (times are not comparable; the "
                   "fidelity figures are deterministic)") if s.name == "fidelity" else "llama.cpp threads = all cores"
        parts += [f"## {s.title}", "", f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}, "
                  f"{threads}, commit {meta['commit']}.", "", s.intro, "", md.read_text().strip(), ""]
        findings = OUT / s.name / "FINDINGS.md"
        if findings.is_file():
            parts += [findings.read_text().strip(), ""]
        if s.name == "speed" and targets():
            parts += ["Targets:", "", targets(), ""]
        if s.name == "fidelity":
            parts += ["![accuracy vs tokens](bench/fidelity/accuracy_vs_tokens.png) "
                      "![KL vs tokens](bench/fidelity/kl_vs_tokens.png)", ""]
        if s.name == "quality":
            parts += ["![accuracy vs tokens](bench/quality/accuracy_vs_tokens.png) "
                      "![time to first token vs tokens](bench/quality/ttft_vs_tokens.png)", ""]
    notes = ROOT / "docs" / "bench" / "NOTES.md"
    if notes.is_file():
        parts += [notes.read_text().strip(), ""]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated sections: " + ", ".join(s.name for s in SECTIONS))
    ap.add_argument("--compose-only", action="store_true", help="rebuild the page from the stored sections")
    args = ap.parse_args()
    wanted = set(args.only.split(",")) if args.only else {s.name for s in SECTIONS}
    unknown = wanted - {s.name for s in SECTIONS}
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}")
    if not args.compose_only:
        for s in SECTIONS:
            if s.name in wanted:
                run_section(s)
    write_atomic(ROOT / "docs" / "BENCHMARKS.md", compose())
    print(f"wrote {ROOT / 'docs' / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
