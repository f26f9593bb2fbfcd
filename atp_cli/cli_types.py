"""Option types shared by the `atp` commands."""

from __future__ import annotations

import math

import click

THREADS = click.IntRange(0, 256)  # 0: every usable core; ggml runs at most 512 threads


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (NaN compares false with every bound, so a range lets it in)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


class PathType(click.Path):
    """click.Path that refuses a NUL byte with a usage error (click's own check lets os.stat raise ValueError)."""

    def convert(self, value, param, ctx):
        if "\x00" in (value.decode(errors="replace") if isinstance(value, bytes) else str(value)):
            self.fail("a path cannot contain a NUL byte", param, ctx)
        return super().convert(value, param, ctx)


def comma_floats(text: str) -> list[float]:
    """'144,64,32' -> [144.0, 64.0, 32.0] (a comma-separated option value); a word that is no number is a usage
    error naming the value."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from e


# what `--source` accepts: atp_cli.data.mix.SOURCE_CHOICES (tested equal), named here so that the CLI starts without
# importing the generators (numpy, PIL)
DATA_SOURCES = ("scenes", "mosaics", "photos", "mix", "train-mix")
