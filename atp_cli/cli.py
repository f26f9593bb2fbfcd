"""The `atp` command line. Thin: each command parses options and makes one call."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from atp_cli.errors import AtpError

EXAMPLE_IMAGE = Path(__file__).resolve().parent / "examples" / "sunset.png"


def _setup_logging(verbose: bool) -> None:
    from atp_cli.runtime.log import quiet_llama_logs

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    quiet_llama_logs(logging.INFO if verbose else logging.ERROR)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log and progress details.")
def cli(verbose: bool) -> None:
    """atp: adaptive visual-token pruning for LLaVA-style models on CPU."""
    _setup_logging(verbose)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
def info(model: Path) -> None:
    """Print a GGUF language model's architecture and whether the segment runtime supports it."""
    from atp_cli.runtime.model import LlamaModel
    from atp_cli.runtime.native import atp_lib

    with LlamaModel(model) as m:
        supported = bool(atp_lib().model_supported(m.ptr))
        click.echo(json.dumps({"path": str(model), "architecture": m.arch, "n_layer": m.n_layer,
                               "n_embd": m.n_embd, "n_vocab": m.n_vocab, "segments_supported": supported}, indent=2))


@cli.command()
@click.option("--image", type=click.Path(path_type=Path), default=EXAMPLE_IMAGE, show_default=True)
@click.option("--question", default="What is the main colour of the image? Answer in one word.", show_default=True)
@click.option("--keep-ratio", type=float, default=0.25, show_default=True,
              help="Fraction of visual tokens kept after the pruning layer (1.0: no pruning).")
@click.option("--layer", type=int, default=3, show_default=True, help="Prune after this decoder layer.")
@click.option("--max-tokens", type=int, default=48, show_default=True)
@click.option("--threads", type=int, default=0, help="CPU threads (0: all).")
def demo(image: Path, question: str, keep_ratio: float, layer: int, max_tokens: int, threads: int) -> None:
    """Ask SmolLM2-135M about an image seen through the colour probe, pruning visual tokens in the decoder."""
    from atp_cli.demo import run_demo

    t0 = time.perf_counter()
    for piece in run_demo(image, question, keep_ratio, layer, max_tokens, threads):
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo(f"\n[{time.perf_counter() - t0:.1f} s]")


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except AtpError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
