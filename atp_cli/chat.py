"""The terminal side of `atp chat`: one-shot and interactive sessions over a Pipeline conversation."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from atp_cli.errors import AtpError, InputError
from atp_cli.files import check_output_file
from atp_cli.keep_map import draw_keep_map
from atp_cli.model_files import find_pair, model_pair
from atp_cli.pipeline import Pipeline, PipelineConfig
from atp_cli.pruning.sap import grid_shape
from atp_cli.runtime.owner import Closeable

HELP = "commands: /image PATH, /strategy NAME, /stats, /help, /quit"


class ChatSession(Closeable):
    def __init__(self, pipe: Pipeline, image: Path, show_keep: Path | None) -> None:
        self.pipe, self.show_keep = pipe, show_keep
        self.conv = pipe.conversation()
        self.image_path = image
        self.conv.set_image(image)
        self.last: dict = {}

    @classmethod
    def open(cls, model_dir: Path | None, strategy: str, config: PipelineConfig, image: Path,
             show_keep: Path | None, files: tuple[Path | None, Path | None] = (None, None),
             params: dict | None = None) -> "ChatSession":
        """A session on a converted folder, on a model + mmproj pair (`files`), or on the default model."""
        from atp_cli.default_model import DEFAULT_DIR, build_default_model

        if show_keep is not None:
            check_output_file(show_keep)  # before the model is loaded
        pair = model_pair(model_dir, *files) or find_pair(build_default_model(DEFAULT_DIR))
        pipe = Pipeline(*pair, strategy, config, **(params or {}))
        try:
            return cls(pipe, image, show_keep)
        except Exception:
            pipe.close()
            raise

    def answer(self, question: str, echo: bool = True) -> str:
        t0 = time.perf_counter()
        first_turn = not self.conv.messages
        pieces = []
        for piece in self.conv.ask(question):
            pieces.append(piece)
            if echo:
                click.echo(piece, nl=False)
                sys.stdout.flush()
        if echo:
            click.echo()
        if first_turn:
            self._record_stats(time.perf_counter() - t0)
        return "".join(pieces)

    def _record_stats(self, seconds: float) -> None:
        result = self.pipe.last_result
        result.kv_bytes = self.pipe.decoder.kv_used_bytes()  # the whole first turn, answer included
        self.last = {**result.summary(), "turn_seconds": round(seconds, 3)}
        st = result.stats
        if self.show_keep is not None and st.kept_raster:
            grid = grid_shape(self.pipe.n_visual)
            draw_keep_map(self.conv.image, st.kept_raster, grid, self.show_keep)

    def one_shot(self, question: str, as_json: bool) -> None:
        text = self.answer(question, echo=not as_json)
        if as_json:
            click.echo(json.dumps({"answer": text, **self.last}, indent=2))

    def interactive(self) -> None:
        """Read questions until /quit, Ctrl-D or two Ctrl-C in a row at the prompt. Ctrl-C during an answer stops
        it and forgets that question (the conversation continues as before it)."""
        click.echo(f"atp chat - image {self.image_path}, strategy {self.pipe.strategy.name}. {HELP}")
        pending_quit = False
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                if pending_quit:
                    click.echo()
                    return
                click.echo("\n[Ctrl-C again, Ctrl-D or /quit to leave]")
                pending_quit = True
                continue
            pending_quit = False
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self._command(line):
                        return
                    continue
                click.echo("atp> ", nl=False)
                self.answer(line)
            except KeyboardInterrupt:
                click.echo("\n[stopped; that question is forgotten]")
            except AtpError as e:
                click.echo(f"error: {e}", err=True)

    def _command(self, line: str) -> bool:
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/quit", "/exit"):
            return True
        if cmd == "/help":
            click.echo(HELP)
        elif cmd == "/image":
            if not arg:
                raise InputError("/image needs a path")
            self.conv.set_image(arg)
            self.image_path = Path(arg)
            click.echo(f"[new image {arg}; conversation restarted]")
        elif cmd == "/strategy":
            self.pipe.set_strategy(arg)
            self.conv.set_image(self.image_path)
            click.echo(f"[strategy {self.pipe.strategy.name}; conversation restarted]")
        elif cmd == "/stats":
            click.echo(json.dumps(self.last, indent=2) if self.last else "[no answer yet]")
        else:
            raise InputError(f"unknown command {cmd}; {HELP}")
        return False

    def close(self) -> None:
        self.pipe.close()
