"""Balanced question types: every answer of a type equally likely, answers that match what is drawn, and no
question that a look at the picture could answer two ways."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from atp_cli.data import mosaics
from atp_cli.data.mix import ANSWERS, balanced_draw, make_mixed_example
from atp_cli.data.scenes import (COLOURS, MIN_GAP, NUMBERS, PER_QUADRANT, QUADRANTS, QUESTION_TYPES, SIZE, SHAPES,
                                 chance, make_example)
from atp_cli.errors import InputError
from tests.test_mosaics import _synthetic


def _quadrant(it) -> str:
    return QUADRANTS[2 * (it.y >= SIZE // 2) + (it.x >= SIZE // 2)]


def _inside_one_quadrant(it) -> bool:
    half = SIZE // 2
    return (it.x + it.r < half or it.x - it.r >= half) and (it.y + it.r < half or it.y - it.r >= half)


def _check_scene_answer(ex) -> None:
    """The answer follows from the items alone, and the question names exactly one thing where it names one."""
    items, q = list(ex.items), ex.question
    assert all(_inside_one_quadrant(it) for it in items)
    assert max(Counter(_quadrant(it) for it in items).values()) <= PER_QUADRANT
    if ex.kind == "colour":
        shape = q.removeprefix("What colour is the ").removesuffix("?")
        (only,) = [it for it in items if it.shape == shape]
        assert only.colour == ex.answer
    elif ex.kind in ("colour_at", "shape_at"):
        where = next(w for w in QUADRANTS if q.endswith(f"the {w}?"))
        (only,) = [it for it in items if _quadrant(it) == where]
        assert (only.colour if ex.kind == "colour_at" else only.shape) == ex.answer
    elif ex.kind == "position":
        colour, shape = q.removeprefix("Where is the ").removesuffix("?").split()
        (only,) = [it for it in items if (it.colour, it.shape) == (colour, shape)]
        assert _quadrant(only) == ex.answer
    elif ex.kind in ("count_colour", "count_shape"):
        named = q.split()[2].removesuffix("s")
        field = "colour" if ex.kind == "count_colour" else "shape"
        assert NUMBERS[sum(getattr(it, field) == named for it in items)] == ex.answer
    elif ex.kind == "exists":
        colour, shape = q.removeprefix("Is there a ").removesuffix("?").split()
        assert ("yes" if any((it.colour, it.shape) == (colour, shape) for it in items) else "no") == ex.answer
    elif ex.kind == "relation":
        words = q.removeprefix("Is the ").removesuffix("?").split()
        (a,) = [it for it in items if (it.colour, it.shape) == (words[0], words[1])]
        (b,) = [it for it in items if (it.colour, it.shape) == (words[-2], words[-1])]
        assert abs(a.x - b.x) >= MIN_GAP and ("yes" if a.x < b.x else "no") == ex.answer
    else:
        assert ex.kind == "text" and ex.answer == ex.word and all(it.y < SIZE // 2 for it in items)


@pytest.mark.parametrize("kind", QUESTION_TYPES)
def test_scene_answers_follow_from_the_drawing(kind):
    for i in range(40):
        ex = make_example("val", i, kind)
        assert ex.kind == kind and ex.answer in ANSWERS[kind]
        _check_scene_answer(ex)


def test_scene_pixels_show_the_named_colour():
    for i in range(10):
        ex = make_example("test", i, "colour_at")
        pixels = np.asarray(ex.image).reshape(-1, 3)
        assert (np.abs(pixels - np.array(COLOURS[ex.answer])).sum(1) == 0).sum() > 200


def test_further_questions_of_a_scene_are_exact_too():
    rng = np.random.default_rng(1)
    seen = set()
    for i in range(60):
        ex = make_example("train", i)
        for question, answer, kind in ex.more_questions(rng, 7):
            _check_scene_answer(type(ex)(ex.image, question, answer, kind, ex.items, ex.word))
            seen.add(kind)
    assert seen == set(QUESTION_TYPES) - {"text"}  # a scene has one word, asked by its own first question


def test_a_given_answer_is_built_and_a_foreign_one_refused():
    for kind in QUESTION_TYPES:
        for answer in ANSWERS[kind]:
            assert make_example("train", 3, kind, answer).answer == answer
    with pytest.raises(InputError, match="not an answer"):
        make_example("train", 0, "count_shape", "seven")
    with pytest.raises(InputError, match="question type"):
        make_example("train", 0, "colours")


@pytest.fixture
def synthetic_items():
    mosaics.set_loader(_synthetic)
    yield
    mosaics.set_loader(None)


def test_mixed_split_is_exactly_balanced_per_type_and_answer(synthetic_items):
    """600 consecutive test examples: each of the 12 types 50 times, each answer within a type equally often (to
    one), so the best answer from the question alone scores chance."""
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for i in range(600):
        ex = make_mixed_example("test", i)
        assert (ex.kind, ex.answer) == balanced_draw("test", i, ("scenes", "mosaics"))[1:]
        by_kind[ex.kind][ex.answer] += 1
    assert set(by_kind) == set(ANSWERS) - {"photo"} and all(sum(c.values()) == 50 for c in by_kind.values())
    for kind, counts in by_kind.items():
        assert set(counts) == set(ANSWERS[kind])
        assert max(counts.values()) - min(counts.values()) <= 1
        best_blind = max(counts.values()) / 50
        assert best_blind <= chance(ANSWERS, kind) + 1 / 50


def test_splits_draw_different_examples(synthetic_items):
    draws = {split: [balanced_draw(split, i, ("scenes", "mosaics")) for i in range(48)] for split in ("train", "test")}
    assert draws["train"] != draws["test"]
    assert Counter(k for _, k, _ in draws["train"]) == Counter(k for _, k, _ in draws["test"])


def test_mosaic_counts_reach_zero_and_four(synthetic_items):
    for answer in ("zero", "four"):
        ex = mosaics.make_example("val", 2, "fashion_count", answer)
        label = next(c for c, g in enumerate(mosaics.CLASSES) if g.plural in ex.question)
        assert sum(c is not None and c.label == label for c in ex.cells) == NUMBERS.index(answer)


def test_shapes_and_colours_cover_every_combination():
    combos = {(it.shape, it.colour) for i in range(200) for it in make_example("train", i).items}
    assert combos == {(s, c) for s in SHAPES for c in COLOURS}
