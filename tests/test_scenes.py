"""The scene generator: fixed splits, exact answers that match what is drawn, LLaVA-format output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atp_cli.data.scenes import (COLOURS, NUMBERS, QUESTION_TYPES, SIZE, exact_match, make_example, normalise,
                                patch_regions, write_split)
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


def test_more_questions_answer_what_is_drawn():
    rng = np.random.default_rng(0)
    for i in range(20):
        ex = make_example("train", i)
        for question, answer, kind in ex.more_questions(rng, 6):
            assert kind in QUESTION_TYPES and (kind != "text" or ex.word) and (kind != "relation" or len(ex.items) > 1)
            if kind == "count_colour":
                colour = question.split()[2]
                assert answer == NUMBERS[sum(it.colour == colour for it in ex.items)]
            if kind == "colour":
                assert answer in {it.colour for it in ex.items if it.shape in question}
            if kind == "text":
                assert answer == ex.word


def test_written_turns_share_the_image_and_keep_the_first_question(tmp_path):
    single = json.loads(write_split(tmp_path / "a", "val", 3).read_text().splitlines()[0])
    packed = [json.loads(line) for line in write_split(tmp_path / "b", "val", 3, turns=5).read_text().splitlines()]
    assert packed[0]["conversations"][:2] == single["conversations"]
    samples = load_samples(tmp_path / "b" / "val.jsonl")
    assert all(len(s.turns) == 5 for s in samples) and samples[0].question == samples[0].turns[0][0]
    assert all("<image>" not in q for s in samples for q, _ in s.turns)
    assert sum(c["value"].count("<image>") for c in packed[0]["conversations"]) == 1
    with pytest.raises(InputError, match="turns"):
        write_split(tmp_path / "c", "val", 1, turns=0)


def test_patch_regions_take_the_majority_above_the_cover():
    regions = np.zeros((8, 8), np.uint8)
    regions[:4, :4] = 1  # patch 0 fully region 1
    regions[:4, 4:5] = 2  # patch 1: a quarter region 2
    regions[4:6, :1] = 3  # patch 2: an eighth region 3, under the cover
    assert patch_regions(regions, 2, min_cover=0.2).tolist() == [1, 2, 0, 0]


def test_patch_words_describe_the_shapes_under_them():
    ex = make_example("train", 5)
    words = ex.patch_words(24)
    assert len(words) == 576
    for it in ex.items:
        row, col = min(it.y // 14, 23), min(it.x // 14, 23)  # the patch under the shape's centre
        assert words[row * 24 + col][:2] == (it.colour, it.shape)
    assert words.count(("background",)) > 576 // 2
