"""Splits that mix the generated sources, so one training set asks about scenes and about mosaics.

The question type and answer of (split, index) are a seeded, stratified draw on a stream of their own
(`balanced_draw`), so every type is equally frequent and every answer within a type equally likely in any run of
consecutive examples; a mixed split is as reproducible as a single-source one, and each example keeps the seed of
its own source. `ANSWERS` holds every type's answers (each equally likely), from which
`chance` gives what a model that does not look can score.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from atp_cli.data import mosaics, photo_questions, scenes
from atp_cli.data.scenes import SPLITS, Example, MakeExample
from atp_cli.errors import InputError

SOURCES: dict[str, MakeExample] = {"scenes": scenes.make_example, "mosaics": mosaics.make_example,
                                   "photos": photo_questions.make_example}
SOURCE_ANSWERS = {"scenes": scenes.ANSWERS, "mosaics": mosaics.ANSWERS, "photos": photo_questions.ANSWERS}
# the types in this order seed their answers' draw (`balanced_draw`): a new source goes at the end
ANSWERS: dict[str, tuple[str, ...]] = {**scenes.ANSWERS, **mosaics.ANSWERS, **photo_questions.ANSWERS}
MIX: tuple[str, ...] = ("scenes", "mosaics")  # `--source mix`: what the benchmarks ask (questions with answers)
TRAINING_MIX: tuple[str, ...] = (*MIX, "photos")  # the default model also learns to say it does not know
NAMED_MIXES: dict[str, tuple[str, ...]] = {"mix": MIX, "train-mix": TRAINING_MIX}
SOURCE_CHOICES: tuple[str, ...] = (*SOURCES, *NAMED_MIXES)  # what `--source` accepts


def sources_named(name: str) -> tuple[str, ...]:
    """The sources `--source NAME` stands for: one source, or a named mix of them."""
    return NAMED_MIXES.get(name, (name,))
SEED_STREAM = 20  # added to the split's seed; scenes use 0, mosaics 10


def _check(sources: tuple[str, ...]) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if not sources or unknown:
        raise InputError(f"sources must be one or more of {list(SOURCES)}, got {list(sources)}")


def make_mixed_example(split: str, index: int, sources: tuple[str, ...] = MIX) -> Example:
    """Example `index` of `split`, its question type and answer from `balanced_draw`."""
    _check(sources)
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    source, kind, answer = balanced_draw(split, index, sources)
    return SOURCES[source](split, index, kind, answer)


def balanced_draw(split: str, index: int, sources: tuple[str, ...]) -> tuple[str, str, str]:
    """(source, type, answer) of example `index`, so that any run of consecutive indices is balanced.

    Indices come in blocks of one example per type (a seeded permutation of the types), and a type's answer in
    block b is the (b mod n)-th of a seeded permutation of its n answers drawn once per n blocks. The first
    12 x 50 examples of a 12-type mix thus hold every type 50 times and every answer of a yes/no type 25 times:
    a model that answers from the question alone scores chance, not the noise of a random draw."""
    kinds = [(source, kind) for source in sources for kind in SOURCE_ANSWERS[source]]
    block, slot = divmod(index, len(kinds))
    stream = SPLITS[split] + SEED_STREAM
    source, kind = kinds[int(np.random.default_rng([stream, block]).permutation(len(kinds))[slot])]
    answers = ANSWERS[kind]
    cycle, turn = divmod(block, len(answers))
    kind_seed = list(ANSWERS).index(kind)
    return source, kind, answers[int(np.random.default_rng([stream, cycle, kind_seed]).permutation(len(answers))[turn])]


def write_mixed_split(out: str | Path, split: str, n: int, sources: tuple[str, ...] = MIX,
                      start: int = 0, turns: int = 1) -> Path:
    """Like scenes.write_split, with each example drawn from one of `sources`."""
    sources = tuple(sources)
    _check(sources)
    return scenes.write_split(out, split, n, start, make=partial(make_mixed_example, sources=sources), turns=turns)
