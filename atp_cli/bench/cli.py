"""`atp bench quality` and `atp bench speed`: the command-line front of atp_cli.bench."""

from __future__ import annotations

from pathlib import Path

import click

from atp_cli.cli_types import DATA_SOURCES, THREADS, FiniteRange, PathType, comma_floats
from atp_cli.paths import cache_dir

DEFAULT_STRATEGIES = "none,atp,atp-free,hybrid,cdpruner,dart,fastv,pdrop,visionzip-style,uniform,random"


def _plans(strategies: list[str], budgets: list[float], atp_points: tuple[float, ...] = ()):
    """Strategies x budgets; `none` and trained `atp` appear once, at their own budget, and `atp` again at each
    budget the mmproj has an operating point for (`atp_points`)."""
    from atp_cli.bench.quality import Plan
    from atp_cli.pruning.registry import NAMES

    unknown = [s for s in strategies if s not in NAMES]
    if unknown:
        raise click.BadParameter(f"unknown strategies {unknown}; choose from {', '.join(NAMES)}")
    plans = [Plan(s) for s in strategies if s in ("none", "atp")]
    plans += [Plan(s, b) for b in budgets for s in strategies if s not in ("none", "atp")]
    if "atp" in strategies:
        plans += [Plan("atp", b) for b in budgets if any(abs(b - p) <= 0.5 for p in atp_points)]
    return plans


def _split_rows(data: Path | None, split: str, count: int, source: str, out: Path) -> list[dict]:
    from atp_cli.data.mix import sources_named, write_mixed_split
    from atp_cli.evaluation import load_split

    if data is None:
        sources = sources_named(source)
        data = write_mixed_split(out / f"data-{split}-{source}", split, count, sources)
    return load_split(data, count)


@click.group()
def bench() -> None:
    """Measure accuracy, speed and memory of pruning strategies side by side with stock llama.cpp."""


@bench.command()
@click.option("--model", "model_dir", type=PathType(path_type=Path), help="Converted model folder (default model).")
@click.option("--data", type=PathType(path_type=Path), help="LLaVA-format JSONL; default: generate --split.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--source", type=click.Choice(DATA_SOURCES), default="scenes",
              show_default=True)
@click.option("-n", "count", type=click.IntRange(1), default=60, show_default=True, help="Questions.")
@click.option("--strategies", default=DEFAULT_STRATEGIES, show_default=True)
@click.option("--budgets", default="144", show_default=True, help="Average visual tokens over all layers.")
@click.option("--calibration", type=PathType(path_type=Path),
              help="JSONL whose first 6 questions calibrate atp-free and the hybrid to each budget (not the test data).")
@click.option("--peer/--no-peer", default=True, show_default=True, help="Also run stock llama-cpp-python.")
@click.option("--blind/--no-blind", default=True, show_default=True, help="Also ask every question without the image.")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=8, show_default=True)
@click.option("--threads", type=THREADS, default=0, help="CPU threads (0: all).")
@click.option("--out", type=PathType(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out (same questions, model and rows).")
@click.option("--chunk", type=click.IntRange(1), default=32, show_default=True,
              help="Questions every row answers before the next ones (each image is encoded once per chunk).")
def quality(model_dir: Path | None, data: Path | None, split: str, source: str, count: int, strategies: str,
            budgets: str, calibration: Path | None, peer: bool, blind: bool, max_tokens: int, threads: int,
            out: Path, resume: bool, chunk: int) -> None:
    """Accuracy, fidelity (agreement, KL, top-1) and cost of strategies x budgets on a question split.

    Every (row, question) is written to OUT/records.jsonl as it completes: a stopped run continues with --resume."""
    from tqdm import tqdm

    from atp_cli.bench import report
    from atp_cli.bench.contention import ContentionWatch
    from atp_cli.bench.peer import StockLlava
    from atp_cli.bench.quality import check_plans, run_quality
    from atp_cli.bench.records import RunStore, files_digest, questions_digest
    from atp_cli.evaluation import load_split
    from atp_cli.model_files import find_pair
    from atp_cli.pipeline import Pipeline, PipelineConfig
    from atp_cli.runtime.context import ContextConfig

    if model_dir is None:
        from atp_cli.default_model import DEFAULT_DIR, build_default_model

        model_dir = build_default_model(DEFAULT_DIR)
    from atp_cli.pruning.store import read_atp

    model_path, mmproj_path = find_pair(Path(model_dir))
    weights = read_atp(mmproj_path)
    plans = _plans([s.strip() for s in strategies.split(",") if s.strip()], comma_floats(budgets),
                   weights.budgets if weights is not None else ())
    rows = _split_rows(data, split, count, source, out)
    if not rows:
        raise click.BadParameter(f"{data or split} holds no questions")
    cal_rows = load_split(calibration, 6) if calibration else []
    check_plans(plans, model_path, mmproj_path, bool(cal_rows))  # before any model work
    header = {"questions": questions_digest(rows), "model": files_digest(model_path, mmproj_path),
              "plans": [[p.strategy, p.budget] for p in plans], "peer": peer, "blind": blind,
              "max_tokens": max_tokens, "machine": report.machine(), "commit": report.commit()}
    store = RunStore.open(out / "run", header, resume)
    # strategies with the same first boundary share the layers before it (reported as if each computed them)
    config = PipelineConfig(context=ContextConfig(n_ctx=1024, n_threads=threads), max_tokens=max_tokens,
                            prefix_cache_bytes=512 * 2**20)
    with ContentionWatch() as watch, Pipeline(model_path, mmproj_path, "none", config) as pipe:
        stock = StockLlava(model_path, mmproj_path, 1024, threads, max_tokens) if peer else None
        n_rows = len(plans) + all(p.strategy != "none" for p in plans) + bool(stock) + blind
        with tqdm(total=len(rows) * n_rows, initial=len(store.done), desc="atp bench", unit="q") as bar:
            results = run_quality(pipe, rows, plans, stock, cal_rows, tick=bar.update, blind=blind, store=store,
                                  chunk=chunk)
        if stock is not None:
            stock.close()
    dicts = [r.as_dict() for r in results]
    title = f"{model_dir.name}: {len(rows)} " + (f"questions of {data}" if data else f"{split} questions ({source})")
    payload = {"machine": store.header.get("machine", report.machine()),  # where and with which code it ran
               "commit": store.header.get("commit", report.commit()), "model": str(model_dir), "title": title,
               "chance": report.chance_by_kind(dicts), "contention": watch.result.as_dict(), "rows": dicts}
    report.write_json(out / "quality.json", payload)
    table = report.quality_table(dicts)
    fidelity = report.fidelity_table(dicts)
    kinds = report.kind_table(dicts) + "\n\n" + report.adaptivity_table(dicts)
    report.write_atomic(out / "quality.md", f"{title}\n\n{table}\n\n{fidelity}\n\n{kinds}\n")
    plots = report.quality_plots(dicts, out, title)
    for w in watch.result.warnings():  # the times of this run; its answers and fidelity figures do not depend on it
        click.echo(f"warning: {w}", err=True)
    click.echo(f"\n{title}, {report.machine()}\n\n{table}\n\n{fidelity}\n\n{kinds}\n\nwrote {out / 'quality.json'}, "
               f"{out / 'quality.md'}, " + ", ".join(str(p) for p in plots))


@bench.command()
@click.option("--shapes", default="7b,1b", show_default=True, help="Random-weight model shapes: 7b, 1b.")
@click.option("--budgets", default="144,64,32", show_default=True,
              help="Average visual tokens of the pruned rows (comma-separated).")
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True, help="Runs per configuration (medians).")
@click.option("--threads", type=THREADS, default=0, help="CPU threads (0: all).")
@click.option("--n-ctx", type=click.IntRange(1024, 1 << 17), default=4096, show_default=True,
              help="Context of every row (stock allocates all of it; atp's later segments what they hold).")
@click.option("--workdir", type=PathType(path_type=Path), default=cache_dir("bench"),
              show_default=True, help="Where the random GGUFs are built once and kept.")
@click.option("--out", type=PathType(path_type=Path), default=Path("bench-out"), show_default=True)
def speed(shapes: str, budgets: str, runs: int, threads: int, n_ctx: int, workdir: Path, out: Path) -> None:
    """Speed only (random weights): stock llama.cpp vs atp and the hybrid at real model shapes, image encoding
    included; the load and CPU steal during the run are recorded, with a warning when they show contention."""
    from tqdm import tqdm

    from atp_cli.bench import report
    from atp_cli.bench.contention import SPREAD_LIMIT, ContentionWatch
    from atp_cli.bench.speed import N_VISUAL, SHAPES, bench_shape, row_plan

    keys = [s.strip() for s in shapes.split(",") if s.strip()]
    if not keys or any(k not in SHAPES for k in keys):
        raise click.BadParameter(f"--shapes takes {', '.join(SHAPES)}, got {shapes!r}")
    targets = tuple(comma_floats(budgets))
    if not targets or any(not 1 <= b <= N_VISUAL for b in targets):
        raise click.BadParameter(f"--budgets takes visual-token averages in 1..{N_VISUAL}, got {budgets!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    total = runs * sum(len(row_plan(targets, SHAPES[k][0].n_layer)) for k in keys)
    with ContentionWatch() as watch, tqdm(total=total, desc="atp bench speed", unit="run") as bar:
        for key in keys:
            bar.set_postfix_str(f"{key}: building or loading the random model")
            results.append(bench_shape(key, workdir, runs, threads, targets, on_run=lambda name: bar.update(),
                                       n_ctx=n_ctx))
    warnings = watch.result.warnings() + [
        f"{r['shape']} {row['config']}: its runs spread by {row['ttft_spread']:.0%} of their median"
        for r in results for row in r["rows"] if row["ttft_spread"] > SPREAD_LIMIT]
    payload = {"machine": report.machine(), "commit": report.commit(), "contention": watch.result.as_dict(),
               "warnings": warnings, "results": results}
    report.write_json(out / "speed.json", payload)
    text = "\n\n".join(report.speed_table(r) for r in results) + "\n\n" + report.contention_line(payload)
    report.write_atomic(out / "speed.md", text + "\n")
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"\n{report.machine()}\n\n{text}\n\nwrote {out / 'speed.json'}, {out / 'speed.md'}")
