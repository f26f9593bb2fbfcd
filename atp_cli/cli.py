"""The `atp` command line. Thin: each command parses options and makes one call."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

import click

from atp_cli.bench.cli import bench
from atp_cli.cli_types import DATA_SOURCES, THREADS, FiniteRange, PathType, comma_floats
from atp_cli.errors import AtpError

EXAMPLE_IMAGE = Path(__file__).resolve().parent / "examples" / "sunset.png"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        from atp_cli.runtime.log import quiet_llama_logs
    except Exception:  # the native library does not load: `atp doctor` says why, other commands fail on first use
        return
    quiet_llama_logs(logging.INFO if verbose else logging.ERROR)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log and progress details.")
def cli(verbose: bool) -> None:
    """atp: adaptive visual-token pruning for LLaVA-style models on CPU."""
    _setup_logging(verbose)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Print what a bug report needs (versions, CPU, the native library and its CPU backend, caches); exit 1 when
    the native library is missing, is not the patched one, or would take ggml's AMX path."""
    from atp_cli.doctor import collect

    report = collect()
    if as_json:
        click.echo(json.dumps({"facts": report.facts, "problems": report.problems}, indent=2, default=str))
    else:
        for line in report.lines():
            click.echo(line)
    if report.problems:
        for problem in report.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("model", type=PathType(path_type=Path))
def info(model: Path) -> None:
    """Print a GGUF language model's architecture and whether the segment runtime supports it."""
    from atp_cli.runtime.model import LlamaModel
    from atp_cli.runtime.native import atp_lib

    with LlamaModel(model) as m:
        supported = bool(atp_lib().model_supported(m.ptr))
        click.echo(json.dumps({"path": str(model), "architecture": m.arch, "n_layer": m.n_layer,
                               "n_embd": m.n_embd, "n_vocab": m.n_vocab, "segments_supported": supported}, indent=2))


@cli.command()
@click.option("--image", type=PathType(path_type=Path), default=EXAMPLE_IMAGE, show_default=True)
@click.option("--question", default="What is the main colour of the image? Answer in one word.", show_default=True)
@click.option("--keep-ratio", type=FiniteRange(0, 1, min_open=True), default=0.25, show_default=True,
              help="Fraction of visual tokens kept after the pruning layer (1.0: no pruning).")
@click.option("--layer", type=click.IntRange(1), default=3, show_default=True, help="Prune after this decoder layer.")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=48, show_default=True)
@click.option("--threads", type=THREADS, default=0, help="CPU threads (0: all).")
def demo(image: Path, question: str, keep_ratio: float, layer: int, max_tokens: int, threads: int) -> None:
    """Ask SmolLM2-135M about an image seen through the colour probe, pruning visual tokens in the decoder."""
    from atp_cli.demo import run_demo

    t0 = time.perf_counter()
    for piece in run_demo(image, question, keep_ratio, layer, max_tokens, threads):
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo(f"\n[{time.perf_counter() - t0:.1f} s]")


@cli.command()
@click.argument("src", type=PathType(path_type=Path))
@click.argument("out", type=PathType(path_type=Path), required=False)
@click.option("--outtype", default="q4_k_m", show_default=True,
              help="Language model type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_m, q4_k_s, "
                   "q4_k_m, q5_k_s, q5_k_m, q6_k.")
@click.option("--mmproj-type", type=click.Choice(["f16", "f32", "q8_0", "bf16"]), default="f16", show_default=True,
              help="Vision tower + projector matrices (q8_0: smaller; bf16: faster on CPUs with AVX512-BF16 or "
                   "AMX; docs/BENCHMARKS.md).")
@click.option("--image-size", type=click.IntRange(1, 8192),
              help="Input size of the vision tower (default: the checkpoint's).")
@click.option("--drop-cls", is_flag=True,
              help="Leave the CLS token out (exact order on stock llama.cpp, approximate values).")
@click.option("--atp", "atp_path", type=PathType(path_type=Path),
              help="ATP weights to write into the mmproj (safetensors from `atp train` or `atp calibrate`).")
@click.option("--attach", is_flag=True, help="Add or replace ATP weights in an already converted folder SRC.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def convert(src: Path, out: Path | None, outtype: str, mmproj_type: str, image_size: int | None, drop_cls: bool,
            atp_path: Path | None, attach: bool, force: bool) -> None:
    """Convert a llava-hf checkpoint folder SRC into OUT: model GGUF, mmproj GGUF and ATP weights."""
    from atp_cli.pruning.store import load_safetensors
    from converters import convert as conv

    weights = load_safetensors(atp_path) if atp_path else None
    if attach:
        if weights is None:
            raise click.UsageError("--attach needs --atp WEIGHTS")
        click.echo(f"ATP weights written into {conv.attach(src, weights)}")
        return
    if out is None:
        raise click.UsageError("give the output folder OUT")
    opts = conv.ConvertOptions(outtype=outtype, mmproj_type=mmproj_type, image_size=image_size,
                               keep_cls=not drop_cls, force=force, atp=weights)
    for line in conv.convert(src, out, opts).lines():
        click.echo(line)


@cli.command()
@click.argument("checkpoint", type=PathType(path_type=Path))
@click.argument("data", type=PathType(path_type=Path))
@click.argument("out", type=PathType(path_type=Path))
@click.option("--budget", type=FiniteRange(0, min_open=True), default=144.0, show_default=True,
              help="Visual tokens averaged over all decoder layers (paper metric).")
@click.option("--boundaries", help="Comma-separated module boundaries (default: spread like 5/15/25 of 32; at a 25 % "
                                   "budget the default model kept more accuracy with 2,10,20 of 30: "
                                   "research/TRAINING_NOTES.md).")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True)
@click.option("--accumulate", type=click.IntRange(1), default=4, show_default=True, help="Examples per optimizer step.")
@click.option("--lr", type=FiniteRange(0, 10, min_open=True), default=1e-3, show_default=True)
@click.option("--lambda-budget", type=FiniteRange(0), default=2.0, show_default=True)
@click.option("--distill", type=FiniteRange(0), default=0.0, show_default=True,
              help="Weight of KL to the unpruned model.")
@click.option("--llm", type=click.Choice(["freeze", "lora", "finetune"]), default="freeze", show_default=True)
@click.option("--save-model", type=PathType(path_type=Path), help="Where to save the tuned checkpoint (lora/finetune).")
@click.option("--hard-masks", is_flag=True,
              help="Forward with inference's hard keep decision (gradient of the soft mask) instead of the soft masks.")
@click.option("--start-thresholds", type=float, nargs=2, metavar="THETA_R THETA_SP",
              help="Every module starts at these thresholds for every image (e.g. a fixed rule calibrated to the "
                   "budget: research/boundary_ablation.py const:...); default: near keeping everything.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def train(checkpoint: Path, data: Path, out: Path, budget: float, boundaries: str | None, steps: int, accumulate: int,
          lr: float, lambda_budget: float, distill: float, llm: str, save_model: Path | None, hard_masks: bool,
          start_thresholds: tuple[float, float] | None, seed: int) -> None:
    """Train ATP threshold modules on a llava-hf CHECKPOINT with LLaVA-format DATA; write OUT (safetensors)."""
    from tqdm import tqdm

    from atp_cli.train.trainer import TrainConfig
    from atp_cli.train.trainer import train as run_training

    cfg = TrainConfig(budget=budget, boundaries=_int_tuple(boundaries), steps=steps, accumulate=accumulate, lr=lr,
                      lambda_budget=lambda_budget, distill=distill, llm=llm,
                      straight_through=hard_masks, start_thresholds=start_thresholds or None, seed=seed)
    with tqdm(total=steps, desc="train", unit="step") as bar:
        def on_step(entry) -> None:
            bar.set_postfix(loss=f"{entry.loss:.3f}", tokens=f"{entry.tokens_avg:.1f}")
            bar.update()

        run_training(checkpoint, data, out, cfg, on_step=on_step, save_model=save_model)
    click.echo(f"ATP weights written to {out}")


def _budgets(text: str) -> tuple[float, ...]:
    values = tuple(comma_floats(text))
    if not values or any(not 0 < v < float("inf") for v in values):
        raise click.BadParameter(f"expected positive budgets, got {text!r}")
    return values


def _calibrate_operating_points(folder: Path, questions: list, budgets: tuple[float, ...], config) -> None:
    """For each budget, the rows a pre-LLM (CDPruner) selection keeps before the trained modules so that the
    visual tokens averaged over all layers meet it on the questions; stored beside the modules."""
    from dataclasses import replace

    from atp_cli.calibration import calibrate_hybrid
    from atp_cli.pipeline import Pipeline
    from converters.convert import attach

    with Pipeline.from_dir(folder, "none", config) as pipe:
        if pipe.weights is None or not pipe.weights.mlps:
            raise click.UsageError(f"{folder}'s mmproj has no trained ATP modules to make operating points of")
        if max(budgets) > pipe.n_visual:
            raise click.BadParameter(f"budgets above the model's {pipe.n_visual} visual tokens: {budgets}")
        kept = []
        for b in sorted(budgets, reverse=True):
            keep, reached = calibrate_hybrid(pipe, questions, b)
            click.echo(f"  budget {b:g}: {keep} rows before the LLM -> {reached:.1f} tokens on average")
            kept.append((b, keep))
        weights = replace(pipe.weights, budgets=tuple(b for b, _ in kept), pre_keep=tuple(k for _, k in kept))
    path = attach(folder, weights)
    click.echo(f"operating points {', '.join(f'{b:g}' for b, _ in kept)} written into {path}")


@cli.command()
@click.argument("folder", type=PathType(path_type=Path))
@click.argument("data", type=PathType(path_type=Path))
@click.option("--budget", type=FiniteRange(0, min_open=True), default=144.0, show_default=True,
              help="Visual tokens averaged over all decoder layers (paper metric).")
@click.option("--strides", default="4,6,8", show_default=True, help="SAP grid stride per module (0: none).")
@click.option("--limit", type=click.IntRange(1), default=32, show_default=True, help="Calibration records used.")
@click.option("--threads", type=THREADS, default=0)
@click.option("--operating-points", "points",
              help="Budgets (e.g. 144,64,32) at which the trained ATP modules run after a pre-LLM selection sized to "
                   "meet each on DATA; written into the mmproj, chosen with `atp chat --budget`.")
def calibrate(folder: Path, data: Path, budget: float, strides: str, limit: int, threads: int,
              points: str | None) -> None:
    """Choose training-free ATP levels for a converted FOLDER that meet --budget on DATA, or (--operating-points)
    the trained modules' operating points; write them into its mmproj."""
    from atp_cli.calibration import calibrate_pipeline
    from atp_cli.pipeline import Pipeline, PipelineConfig
    from atp_cli.pruning.store import AtpWeights
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.llava_data import load_samples
    from converters.convert import attach

    samples = load_samples(data)[:limit]
    config = PipelineConfig(context=ContextConfig(n_threads=threads))
    if points is not None:
        _calibrate_operating_points(folder, [(s.image, s.question) for s in samples], _budgets(points), config)
        return
    with Pipeline.from_dir(folder, "atp-free", config) as pipe:
        existing = pipe.weights
        atp_config, result = calibrate_pipeline(pipe, [(s.image, s.question) for s in samples], budget,
                                                _int_tuple(strides) or (),
                                                on_step=lambda p, v: click.echo(f"  mass {p:.4f} -> {v:.1f} tokens"))
    weights = AtpWeights(atp_config, existing.mlps if existing else (), result.mass, result.stride)
    path = attach(folder, weights)
    click.echo(f"mass {result.mass[0]:.4f}, strides {list(result.stride)}: {result.achieved:.1f} tokens "
               f"(target {budget:g}); written into {path}")


@cli.command()
@click.argument("question", required=False)
@click.option("--image", type=PathType(path_type=Path), required=True, help="The image to talk about.")
@click.option("--model", "model_dir", type=PathType(path_type=Path),
              help="A folder made by `atp convert` (default: the default model).")
@click.option("--gguf", "gguf_file", type=PathType(path_type=Path),
              help="A language-model GGUF from llama.cpp's ecosystem (with --mmproj; instead of --model).")
@click.option("--mmproj", "mmproj_file", type=PathType(path_type=Path), help="Its vision projector GGUF.")
@click.option("--strategy", default="atp", show_default=True, help="atp, atp-free, hybrid, cdpruner, dart, fastv, "
              "pdrop, visionzip-style, uniform, random or none.")
@click.option("--budget", type=FiniteRange(0, min_open=True),
              help="atp: run the mmproj's operating point for this average visual-token budget (e.g. 64).")
@click.option("--json", "as_json", is_flag=True, help="One-shot: print the answer and statistics as JSON.")
@click.option("--show-keep", type=PathType(path_type=Path), help="Write a PNG of the tokens kept per module.")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=256, show_default=True)
@click.option("--temperature", type=FiniteRange(0, 100), default=0.0, show_default=True)
@click.option("--top-p", type=FiniteRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--n-ctx", type=click.IntRange(64, 1 << 20), default=2048, show_default=True)
@click.option("--threads", type=THREADS, default=0, help="CPU threads (0: all).")
def chat(question: str | None, image: Path, model_dir: Path | None, gguf_file: Path | None, mmproj_file: Path | None,
         strategy: str, budget: float | None, as_json: bool, show_keep: Path | None, max_tokens: int,
         temperature: float, top_p: float, seed: int, n_ctx: int, threads: int) -> None:
    """Chat about an image. With QUESTION: answer once and exit; without: an interactive session
    (/image PATH, /strategy NAME, /stats, /quit; Ctrl-C stops an answer, not the session)."""
    from atp_cli.chat import ChatSession
    from atp_cli.pipeline import PipelineConfig
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.sampling import SamplerConfig

    config = PipelineConfig(context=ContextConfig(n_ctx=n_ctx, n_threads=threads),
                            sampler=SamplerConfig(temperature, top_p, seed), max_tokens=max_tokens)
    if budget is not None and strategy != "atp":
        raise click.UsageError("--budget selects an operating point of the atp strategy; other strategies take "
                               "their budgets in atp bench quality")
    params = {} if budget is None else {"budget": budget}
    with ChatSession.open(model_dir, strategy, config, image, show_keep, files=(gguf_file, mmproj_file),
                          params=params) as session:
        if question is not None:
            session.one_shot(question, as_json)
        else:
            session.interactive()


@cli.command()
@click.argument("out", type=PathType(path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("-n", "count", type=click.IntRange(1), default=1000, show_default=True, help="Examples to write.")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True,
              help="First example index (seeded per index).")
@click.option("--source", type=click.Choice(DATA_SOURCES), default="scenes",
              show_default=True,
              help="Rendered scenes, Fashion-MNIST mosaics (Debian package dataset-fashion-mnist), real photographs "
                   "asked their questions and answered \"I don't know\", scenes and mosaics mixed, or all three mixed "
                   "(the default model's training data).")
@click.option("--photos", is_flag=True, help="Write the demo photos (PNG) into OUT instead of question-answer data.")
def data(out: Path, split: str, count: int, start: int, source: str, photos: bool) -> None:
    """Write generated question-answer data (images + LLaVA-format JSONL) into OUT."""
    if photos:
        from atp_cli.data.photos import write_photos

        click.echo(f"wrote {len(write_photos(out))} photos into {out}")
        return
    from atp_cli.data.mix import sources_named, write_mixed_split

    if count < 1:
        raise click.BadParameter("-n must be at least 1")
    sources = sources_named(source)
    click.echo(f"wrote {write_mixed_split(out, split, count, sources, start)}")


@cli.command("default-model")
@click.option("--out", type=PathType(path_type=Path), help="Folder to write (default: ~/.cache/atp/default-model).")
@click.option("--force", is_flag=True, help="Rebuild even if the folder exists.")
@click.option("--artifacts", type=PathType(path_type=Path, exists=True, file_okay=False),
              help="Trained artifacts to assemble (projector, lora, atp .safetensors; default: the committed ones).")
@click.option("--mmproj-type", type=click.Choice(["f16", "bf16", "q8_0"]), default="f16", show_default=True,
              help="The tower's matrices (bf16: faster on CPUs with AVX512-BF16 or AMX; needs --out).")
def default_model(out: Path | None, force: bool, artifacts: Path | None, mmproj_type: str) -> None:
    """Assemble the default model (DINOv2-S + trained projector + SmolLM2-135M + ATP) from packaged weights."""
    from atp_cli.default_model import ARTIFACTS, DEFAULT_DIR, build_default_model

    if artifacts is not None and out is None:
        raise click.UsageError("--artifacts needs --out: the default folder holds the committed artifacts' model")
    if mmproj_type != "f16" and out is None:
        raise click.UsageError("--mmproj-type needs --out: the default folder holds the f16 model every command uses")
    folder = build_default_model(out or DEFAULT_DIR, force, artifacts or ARTIFACTS, mmproj_type)
    click.echo(f"default model in {folder}")


@cli.command()
@click.option("--model", "model_dir", type=PathType(path_type=Path),
              help="A folder made by `atp convert` (default: the default model).")
@click.option("--gguf", "gguf_file", type=PathType(path_type=Path),
              help="A language-model GGUF from llama.cpp's ecosystem (with --mmproj; instead of --model).")
@click.option("--mmproj", "mmproj_file", type=PathType(path_type=Path), help="Its vision projector GGUF.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Pipelines answering at once (each gets its share of the cores).")
@click.option("--queue", "queue_size", type=click.IntRange(0, 10_000), default=8, show_default=True,
              help="Requests that may wait for a worker; beyond them the answer is 429 with Retry-After.")
@click.option("--strategy", default="atp", show_default=True, help="Default pruning strategy (a request's "
              '"atp": {"strategy": ..., "budget": ...} overrides it).')
@click.option("--budget", type=FiniteRange(0, min_open=True), help="Default average visual-token budget.")
@click.option("--low-detail-budget", type=FiniteRange(0, min_open=True), default=64.0, show_default=True,
              help='Budget for image parts with detail "low" (detail "high": every visual token).')
@click.option("--allow-images", type=PathType(path_type=Path, exists=True, file_okay=False),
              help="Folder whose files requests may name as images (default: data: URIs only).")
@click.option("--max-image-bytes", type=click.IntRange(1), default=20 * 2**20, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True,
              help="The most a request may generate (and its default).")
@click.option("--n-ctx", type=click.IntRange(64, 1 << 20), default=4096, show_default=True)
@click.option("--threads", type=THREADS, default=0, help="CPU threads per worker (0: the cores shared out).")
@click.option("--model-id", help="The model name clients use (default: the model folder's or file's name).")
def serve(model_dir: Path | None, gguf_file: Path | None, mmproj_file: Path | None, host: str, port: int,
          workers: int, queue_size: int, strategy: str, budget: float | None, low_detail_budget: float,
          allow_images: Path | None, max_image_bytes: int, max_tokens: int, n_ctx: int, threads: int,
          model_id: str | None) -> None:
    """Serve the OpenAI chat-completions API (POST /v1/chat/completions, GET /v1/models, GET /health)."""
    import uvicorn

    from atp_cli.default_model import DEFAULT_DIR, build_default_model
    from atp_cli.model_files import find_pair, model_pair
    from atp_cli.pipeline import PipelineConfig
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.server import close_served, open_served
    from atp_cli.server.app import create_app
    from atp_cli.server.images import ImagePolicy
    from atp_cli.server.jobs import Pruning, ServeDefaults

    pair = model_pair(model_dir, gguf_file, mmproj_file)
    default_id = "atp-default" if pair is None else (model_dir.name if model_dir is not None else gguf_file.stem)
    pair = pair or find_pair(build_default_model(DEFAULT_DIR))
    defaults = ServeDefaults(pruning=Pruning(strategy, budget), low_detail_budget=low_detail_budget,
                             max_tokens=max_tokens, images=ImagePolicy(max_image_bytes, allow_images))
    config = PipelineConfig(context=ContextConfig(n_ctx=n_ctx, n_threads=threads))
    served = open_served(pair, model_id or default_id, workers, defaults, config, queue_size)
    served.max_body_bytes = max_image_bytes * 4 // 3 + 2**20
    try:
        click.echo(f"serving {served.model_id} on http://{host}:{port}/v1 ({workers} worker(s))", err=True)
        uvicorn.run(create_app(served), host=host, port=port, log_level="warning")
    finally:
        close_served(served)


def _int_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from e


cli.add_command(bench)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: a user error is one line on stderr (`error: ...`) and exit code 2 (130 for Ctrl-C); with
    -v/--verbose its traceback follows. Any other exception is a bug and keeps its traceback."""
    args = sys.argv[1:] if argv is None else argv
    verbose = bool({"-v", "--verbose"} & set(args[:1]))
    try:
        cli(args=args, prog_name="atp", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        hint = f" (see 'atp {e.ctx.command_path.partition(' ')[2]} --help')".replace("atp  ", "atp ") \
            if isinstance(e, click.UsageError) and e.ctx is not None else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except AtpError as e:
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
