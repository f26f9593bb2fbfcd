"""Splits that mix the generated sources, so one training set asks about scenes and about mosaics.

Which source answers for (split, index) is itself a seeded draw, on a stream of its own, so a mixed split is
as reproducible as a single-source one and each example keeps the seed of its own source.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from atp_cli.data import mosaics, scenes
from atp_cli.data.scenes import SPLITS, Example, MakeExample
from atp_cli.errors import InputError

SOURCES: dict[str, MakeExample] = {"scenes": scenes.make_example, "mosaics": mosaics.make_example}
SEED_STREAM = 20  # added to the split's seed; scenes use 0, mosaics 10


def _check(sources: tuple[str, ...]) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if not sources or unknown:
        raise InputError(f"sources must be one or more of {list(SOURCES)}, got {list(sources)}")


def make_mixed_example(split: str, index: int, sources: tuple[str, ...] = ("scenes", "mosaics")) -> Example:
    """Example `index` of `split` from one of `sources`, picked by a seeded draw."""
    _check(sources)
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([SPLITS[split] + SEED_STREAM, index])
    return SOURCES[sources[int(rng.integers(len(sources)))]](split, index)


def write_mixed_split(out: str | Path, split: str, n: int, sources: tuple[str, ...] = ("scenes", "mosaics"),
                      start: int = 0, turns: int = 1) -> Path:
    """Like scenes.write_split, with each example drawn from one of `sources`."""
    sources = tuple(sources)
    _check(sources)
    return scenes.write_split(out, split, n, start, make=partial(make_mixed_example, sources=sources), turns=turns)
