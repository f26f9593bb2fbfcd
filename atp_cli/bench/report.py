"""Benchmark results as JSON, markdown tables and PNG plots (written atomically)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import psutil

from atp_cli import cpu
from atp_cli.files import atomic_path
from atp_cli.bench.quality import PEER, UNPRUNED

ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    """CPU model, usable cores, instruction sets and memory: what every published figure names."""
    return f"{cpu.describe()}, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def write_atomic(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def write_json(path: Path, payload: dict) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str))


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _retained(row: dict) -> str:
    """`retained` as a percentage with its interval, e.g. "95.0 % (87.5-102.6)"; rows from older files lack it."""
    if row.get("retained") is None:
        return "-"
    ci = row.get("retained_ci")
    return f"{100 * row['retained']:.1f} %" + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "")


def quality_table(rows: list[dict], peer: str = PEER) -> str:
    """One line per row; TTFT speed-up is against the stock peer's row when it was run."""
    kinds = sorted({k for r in rows for k in r["by_kind"]})
    stock_ttft = next((r["ttft_s"] for r in rows if r["strategy"] == peer), None)
    head = ("| strategy | budget | avg visual tokens | tokens into LLM | accuracy | retained (95 % CI) | agreement "
            "| encode s | prefill s | TTFT s | TTFT speed-up vs stock | decode tok/s | KV MiB | peak RSS MiB | "
            + " | ".join(kinds) + " |")
    lines = [head, "|" + "---|" * (14 + len(kinds))]
    for r in rows:
        speedup = stock_ttft / r["ttft_s"] if stock_ttft and r["ttft_s"] else None
        cells = " | ".join("{}/{}".format(*r["by_kind"][k]) if k in r["by_kind"] else "-" for k in kinds)
        lines.append(
            f"| {r['strategy']} | {_f(r['budget'], '.0f')} | {r['tokens_avg']:.0f} | {r['visual_in']:.0f} "
            f"| {100 * r['accuracy']:.1f} % | {_retained(r)} | {100 * r['agreement']:.1f} % | {_f(r['encode_s'], '.3f')} "
            f"| {_f(r['prefill_s'], '.3f')} | {r['ttft_s']:.3f} | {_f(speedup, '.2f')} | {_f(r['decode_tok_s'], '.1f')} "
            f"| {r['kv_mib']:.2f} "
            f"| {r['peak_rss_mib']:.0f} | {cells} |")
    return "\n".join(lines)


def _pct_ci(value: float | None, ci) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "")


def _num_ci(value: float | None, ci, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return format(value, spec) + (f" ({format(ci[0], spec)}-{format(ci[1], spec)})" if ci else "")


def _versus(row: dict, metric: str, scale: float, spec: str) -> str:
    v = row.get("versus", {}).get(metric)
    if not v:
        return "-"
    d, ci = v
    mark = "" if ci is None or ci[0] <= 0 <= ci[1] else " *"
    body = format(scale * d, spec) + (f" ({format(scale * ci[0], spec)}..{format(scale * ci[1], spec)})" if ci else "")
    return body + mark


def fidelity_table(rows: list[dict]) -> str:
    """Fidelity to the unpruned model with 95 % paired bootstrap intervals, and each row's difference from the atp
    row nearest in tokens (row minus atp; * where the interval excludes 0)."""
    lines = ["| strategy | budget | avg visual tokens | accuracy % | agreement % | KL first token (nats) | top-1 % "
             "| vs | accuracy diff (points) | agreement diff (points) | KL diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {_f(r['budget'], '.0f')} | {r['tokens_avg']:.0f} "
            f"| {_pct_ci(r['accuracy'], r.get('accuracy_ci'))} "
            f"| {_pct_ci(r['agreement'], r.get('agreement_ci')) if r['strategy'] != UNPRUNED else '100'} "
            f"| {_num_ci(r.get('kl'), r.get('kl_ci'))} | {_pct_ci(r.get('top1'), r.get('top1_ci'))} "
            f"| {r.get('versus', {}).get('row', '-')} | {_versus(r, 'correct', 100, '.1f')} "
            f"| {_versus(r, 'agree', 100, '.1f')} | {_versus(r, 'kl', 1, '.3f')} |")
    return "\n".join(lines)


def chance_by_kind(rows: list[dict]) -> dict[str, float]:
    """Accuracy of a uniform guess per question type, for the generated types (atp_cli.data.mix.ANSWERS)."""
    from atp_cli.data.mix import ANSWERS

    kinds = {k for r in rows for k in r["by_kind"]}
    return {k: 1.0 / len(ANSWERS[k]) for k in sorted(kinds) if k in ANSWERS}


def kind_table(rows: list[dict]) -> str:
    """Per question type: chance, blind, the unpruned model and every other row (right / asked)."""
    chance = chance_by_kind(rows)
    kinds = sorted({k for r in rows for k in r["by_kind"]})
    lines = ["| type | chance | " + " | ".join(f"{r['strategy']}{'' if r['budget'] is None else '@%g' % r['budget']}"
                                              for r in rows) + " |", "|---|---|" + "---|" * len(rows)]
    for k in kinds:
        cells = " | ".join("{}/{}".format(*r["by_kind"][k]) if k in r["by_kind"] else "-" for r in rows)
        lines.append(f"| {k} | {_f(100 * chance[k] if k in chance else None, '.0f')} % | {cells} |")
    return "\n".join(lines)


def adaptivity_table(rows: list[dict], kinds_of: list[str] | None = None) -> str:
    """Per row with in-LLM modules: the visual tokens each module kept over the questions (mean, 5th-95th
    percentile, min-max), and the mean per question type - a fixed rule keeps the same count everywhere, an
    adaptive one does not."""
    lines = ["| strategy | budget | module | mean kept | p5-p95 | min-max | mean by type |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = [k for k in r.get("kept_per_module", []) if k]
        if not kept or len({len(k) for k in kept}) != 1:
            continue
        arr = np.asarray(kept, float)  # (questions, modules)
        types = r.get("kinds") or []
        for m in range(arr.shape[1]):
            col = arr[:, m]
            by_type = ""
            if types and len(types) == len(col):
                means = {t: col[[i for i, k in enumerate(types) if k == t]].mean() for t in sorted(set(types))}
                by_type = ", ".join(f"{t} {v:.0f}" for t, v in means.items())
            lines.append(f"| {r['strategy']} | {_f(r['budget'], '.0f')} | {m + 1} | {col.mean():.1f} "
                         f"| {np.percentile(col, 5):.0f}-{np.percentile(col, 95):.0f} | {col.min():.0f}-{col.max():.0f} "
                         f"| {by_type} |")
    return "\n".join(lines)


def speed_table(res: dict) -> str:
    lines = [
        f"#### {res['label']}, Q4_K_M, random weights (speed only), {res['threads'] or 'all'} threads, "
        f"median of {res['runs']} runs",
        "",
        "| config | avg visual tokens | tokens into LLM | encode s | prefill s | prefill speed-up | TTFT s "
        "| TTFT speed-up | decode tok/s | decode / stock | KV after prompt MiB | / stock | KV after decode MiB | / stock "
        f"| KV allocated MiB (n_ctx {res.get('n_ctx', 1024)}) | / stock | peak RSS MiB | TTFT spread of the runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['config']} | {r['tokens_avg']:.0f} | {r['visual_in']} | {r['encode_s']:.2f} | {r['prefill_s']:.2f} "
            f"| {r['prefill_vs_stock']:.2f}x | {r['ttft_s']:.2f} | {r['ttft_vs_stock']:.2f}x | {r['decode_tok_s']:.2f} "
            f"| {r['decode_vs_stock']:.2f} | {r['kv_prompt_mib']:.1f} | {r['kv_prompt_vs_stock']:.2f} "
            f"| {r['kv_used_mib']:.1f} | {r['kv_vs_stock']:.2f} | {r.get('kv_alloc_mib', 0.0):.0f} "
            f"| {r.get('kv_alloc_vs_stock', 0.0):.2f} | {r['peak_rss_mib']:.0f} "
            f"| {r.get('ttft_spread', 0.0):.0%} |")
    return "\n".join(lines)


def contention_line(payload: dict) -> str:
    """How quiet the machine was during the run, and its warnings."""
    c = payload["contention"]
    line = (f"Load average {c['load_start']:.2f} at the start, {c['load_end']:.2f} at the end; other processes used "
            f"{c['others_share']:.1%} of the CPU and the hypervisor stole {c['steal_share']:.1%} over the "
            f"{c['seconds'] / 60:.0f} minutes of the run.")
    return "\n".join([line, *(f"\n**Warning:** {w}." for w in payload.get("warnings", []))])


def quality_plots(rows: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Accuracy, KL against the unpruned model and time to first token, each against average visual tokens (a line
    per strategy; rows without the figure, e.g. the stock peer's KL, are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label, name in (("accuracy", "exact-match accuracy", "accuracy_vs_tokens.png"),
                             ("kl", "KL of the first answer token vs unpruned (nats)", "kl_vs_tokens.png"),
                             ("ttft_s", "time to first token (s)", "ttft_vs_tokens.png")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            pts = sorted((r["tokens_avg"], r[key]) for r in rows if r["strategy"] == strategy
                         and r.get(key) is not None and (key != "ttft_s" or r[key] > 0))  # the blind row has no TTFT
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
        ax.set_xlabel("visual tokens averaged over all layers")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir, name))
    histogram = kept_histograms(rows, out_dir, title)
    return paths + ([histogram] if histogram is not None else [])


ADAPTIVE = ("atp", "atp-free", "hybrid")  # strategies whose modules keep a different count per image


def kept_histograms(rows: list[dict], out_dir: Path, title: str) -> Path | None:
    """Per adaptive row, a histogram per module of the visual tokens it kept over the questions, and the mean per
    question type beside it: what adapts to the image and the question, and by how much."""
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["strategy"] in ADAPTIVE and any(r.get("kept_per_module") or [])]
    if not chosen:
        return None
    fig, axes = plt.subplots(len(chosen), 2, figsize=(10, 2.4 * len(chosen)), dpi=100, squeeze=False)
    for (hist, by_type), r in zip(axes, chosen):
        per_question = r.get("kinds") or ["all"] * len(r["kept_per_module"])
        pairs = [(k, kind) for k, kind in zip(r["kept_per_module"], per_question) if k]  # questions it pruned
        kept = np.array([k for k, _ in pairs], dtype=float)
        of_kind = np.array([kind for _, kind in pairs])
        label = r["strategy"] + (f"@{r['budget']:g}" if r.get("budget") is not None else "")
        kinds = sorted(set(of_kind))
        for m in range(kept.shape[1]):
            hist.hist(kept[:, m], bins=30, alpha=0.6, label=f"module {m + 1}")
            by_type.plot(range(len(kinds)), [kept[of_kind == kind, m].mean() for kind in kinds], marker="o",
                         label=f"module {m + 1}")
        hist.set_title(f"{label}: tokens kept per question", fontsize=8)
        hist.legend(fontsize=6)
        by_type.set_xticks(range(len(kinds)), kinds, rotation=45, fontsize=6, ha="right")
        by_type.set_title(f"{label}: mean kept by question type", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out_dir, "kept_per_module.png")


def _save(fig, out_dir: Path, name: str) -> Path:
    """The figure as out_dir/name, written atomically."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.part.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_dir / name)
    return out_dir / name
