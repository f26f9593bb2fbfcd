"""Photographs asked the generated questions: every answer "I don't know", the demo photos held out, and the
benchmarks' mix untouched by the new source."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from atp_cli.cli import cli
from atp_cli.data import mosaics, photo_questions, scenes
from atp_cli.cli_types import DATA_SOURCES
from atp_cli.data.mix import MIX, SOURCE_CHOICES, TRAINING_MIX, balanced_draw, make_mixed_example
from atp_cli.data.photos import PHOTOS
from atp_cli.errors import InputError
from tests.test_mosaics import synthetic_items  # noqa: F401  (autouse: mosaics from synthetic items, no apt package)


def test_every_question_of_a_photo_is_answered_i_dont_know():
    for index in range(6):
        ex = photo_questions.make_example("train", index)
        assert ex.kind == "photo" and ex.answer == "I don't know" and ex.image.size == (scenes.SIZE,) * 2
        more = ex.more_questions(np.random.default_rng(index), 5)
        assert 3 <= len(more) <= 5 and {(a, k) for _, a, k in more} == {("I don't know", "photo")}
        asker = (scenes if index % 2 == 0 else mosaics).make_example("train", index)
        assert ex.question == asker.question  # a scene's or a mosaic's own question


def test_photo_examples_are_seeded_and_differ_between_indices_and_splits():
    a, b = photo_questions.make_example("val", 7), photo_questions.make_example("val", 7)
    assert a.image.tobytes() == b.image.tobytes() and a.question == b.question
    images = {photo_questions.make_example(s, i).image.tobytes() for s in ("train", "test") for i in range(4)}
    assert len(images) == 8


def test_the_demo_photos_are_never_trained_on():
    used = {Path(f).stem for f in (*photo_questions.SKIMAGE_FILES, *photo_questions.MATPLOTLIB_FILES)}
    assert not used & set(PHOTOS)
    ranges = [set(r) for r in photo_questions.FACE_RANGE.values()]
    assert sum(map(len, ranges)) == len(set().union(*ranges)) == 200


def test_bad_photo_requests():
    with pytest.raises(InputError, match="split"):
        photo_questions.make_example("dev", 0)
    with pytest.raises(InputError, match="photo question type"):
        photo_questions.make_example("train", 0, kind="colour")
    with pytest.raises(InputError, match="not an answer"):
        photo_questions.make_example("train", 0, answer="red")


def test_the_training_mix_holds_every_type_equally_often_and_the_benchmark_mix_is_unchanged():
    kinds = Counter(make_mixed_example("train", i, TRAINING_MIX).kind for i in range(13 * 4))
    assert len(kinds) == 13 and set(kinds.values()) == {4} and kinds["photo"] == 4
    # the (source, type, answer) of the first 600 examples of every split with scenes and mosaics, as they were
    # before the photo source existed: the published benchmark's questions must not move
    draws = [balanced_draw(s, i, MIX) for s in ("train", "val", "test") for i in range(600)]
    assert hashlib.sha256(repr(draws).encode()).hexdigest() == (
        "bc8abb7eb086ca3c5c1a6bddda48ee30c957837ee0c2659180856cb761ea8284")


def test_atp_data_writes_photo_questions(tmp_path):
    assert DATA_SOURCES == SOURCE_CHOICES  # the CLI's list of sources is the generators' own
    res = CliRunner().invoke(cli, ["data", str(tmp_path), "--split", "val", "-n", "2", "--source", "photos"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["photo", "photo"]
    assert all(r["conversations"][1]["value"] == "I don't know" and (tmp_path / r["image"]).is_file()
               for r in records)
