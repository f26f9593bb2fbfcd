"""The scene generator: fixed splits, exact answers that match what is drawn, LLaVA-format output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atp_cli.data.scenes import COLOURS, QUESTION_TYPES, SIZE, exact_match, make_example, normalise, write_split
from atp_cli.errors import InputError
from atp_cli.train.data import load_samples


def test_splits_are_reproducible_and_distinct():
    a, b = make_example("train", 3), make_example("train", 3)
    assert a.question == b.question and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    tests = {np.asarray(make_example("test", i).image).tobytes() for i in range(20)}
    trains = {np.asarray(make_example("train", i).image).tobytes() for i in range(20)}
    assert not tests & trains
    with pytest.raises(InputError):
        make_example("dev", 0)


@pytest.mark.parametrize("kind", QUESTION_TYPES)
def test_every_question_type(kind):
    for i in range(10):
        ex = make_example("val", i, kind)
        assert ex.image.size == (SIZE, SIZE) and ex.kind == kind and ex.answer


def test_colour_answers_are_in_the_picture():
    for i in range(10):
        ex = make_example("train", i, "colour")
        rgb = np.array(COLOURS[ex.answer])
        pixels = np.asarray(ex.image).reshape(-1, 3)
        assert (np.abs(pixels - rgb).sum(1) == 0).sum() > 200


def test_exact_match_rules():
    assert exact_match("Red.", "red") and exact_match("3", "three") and exact_match("top left corner", "top left")
    assert not exact_match("the red one", "red") and not exact_match("blue", "red")
    assert normalise("  Two!! ") == "two"


def test_written_split_loads_as_training_data(tmp_path):
    path = write_split(tmp_path, "val", 6)
    samples = load_samples(path)
    assert len(samples) == 6 and all(s.image.is_file() for s in samples)
    assert json.loads(path.read_text().splitlines()[0])["kind"] in QUESTION_TYPES
