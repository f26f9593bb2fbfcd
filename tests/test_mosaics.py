"""Fashion-MNIST mosaics, demo photos and mixed splits: fixed splits, answers that match what is drawn.

Synthetic 28x28 items stand in for Fashion-MNIST, so these run without the Debian package; one test reads the
real files where the package is installed.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from atp_cli.cli import cli
from atp_cli.data import mosaics, photos
from atp_cli.data.mix import make_mixed_example, write_mixed_split
from atp_cli.data.mosaics import CELL, CLASSES, POSITIONS, QUESTION_TYPES, load_fashion_mnist
from atp_cli.data.scenes import NUMBERS, SIZE, exact_match
from atp_cli.data.scenes import QUESTION_TYPES as SCENE_TYPES
from atp_cli.errors import InputError

PER_PART = {"train": 120, "test": 40}  # 12 and 4 items per class: train 0-99, val 100-119


def _synthetic(part: str) -> tuple[np.ndarray, np.ndarray]:
    """A bright filled square per item, labels cycling through the classes."""
    n = PER_PART[part]
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = 255
    return images, (np.arange(n) % len(CLASSES)).astype(np.uint8)


@pytest.fixture(autouse=True)
def synthetic_items():
    mosaics.set_loader(_synthetic)
    yield
    mosaics.set_loader(None)


def _image(ex) -> np.ndarray:
    return np.asarray(ex.image).astype(int)


def test_examples_are_reproducible_per_split_and_index():
    a, b = mosaics.make_example("train", 7), mosaics.make_example("train", 7)
    assert (a.question, a.answer, a.kind, a.cells) == (b.question, b.answer, b.kind, b.cells)
    assert np.array_equal(_image(a), _image(b))
    others = [mosaics.make_example(split, 7) for split in ("val", "test")] + [mosaics.make_example("train", 8)]
    assert all(not np.array_equal(_image(a), _image(o)) for o in others)
    with pytest.raises(InputError):
        mosaics.make_example("dev", 0)
    with pytest.raises(InputError):
        mosaics.make_example("train", 0, "colour")


@pytest.mark.parametrize("kind", QUESTION_TYPES)
def test_answers_match_the_layout(kind):
    for i in range(12):
        ex = mosaics.make_example("val", i, kind)
        assert ex.image.size == (SIZE, SIZE) and ex.image.mode == "RGB" and ex.kind == kind
        labels = [c.label if c else None for c in ex.cells]
        if kind == "fashion_what":
            pos = POSITIONS.index(ex.question.removeprefix("What item is in the ").removesuffix("?"))
            assert labels[pos] is not None and CLASSES[labels[pos]].name == ex.answer
        elif kind == "fashion_where":
            label = next(c for c, g in enumerate(CLASSES) if ex.question == f"Where is the {g.noun}?")
            assert labels.count(label) == 1 and labels[POSITIONS.index(ex.answer)] == label
        else:
            label = next(c for c, g in enumerate(CLASSES) if ex.question == f"How many {g.plural} are there?")
            assert NUMBERS[labels.count(label)] == ex.answer  # zero included: the class may be absent


def _cells(pixels: np.ndarray) -> list[np.ndarray]:
    return [pixels[(pos // 2) * CELL:(pos // 2 + 1) * CELL, (pos % 2) * CELL:(pos % 2 + 1) * CELL]
            for pos in range(len(POSITIONS))]


def test_drawn_cells_match_the_layout():
    """Empty cells are plain background; filled ones hold a dark item with background around it."""
    for i in range(12):
        ex = mosaics.make_example("test", i)
        for cell, region in zip(ex.cells, _cells(_image(ex))):
            brightness = region.sum(-1)
            if cell is None:
                assert (region == region[0, 0]).all() and brightness.min() >= 3 * 215
            else:
                assert brightness.min() < 3 * 90 and brightness.max() >= 3 * 215


def test_splits_never_share_an_item():
    used = {split: {c.item for i in range(40) for c in mosaics.make_example(split, i).cells if c}
            for split in ("train", "val", "test")}
    assert max(used["train"]) < 100 <= min(used["val"]) and max(used["val"]) < PER_PART["train"]
    assert max(used["test"]) < PER_PART["test"]
    assert mosaics.item_range("train", 60000) == range(50000) and mosaics.item_range("val", 60000) == range(50000, 60000)
    assert mosaics.item_range("test", 10000) == range(10000)


def test_exact_match_on_class_names():
    names = [g.name for g in CLASSES]
    for name in names:
        assert exact_match(name, name) and exact_match(f"{name.title()}.", name)
        assert [other for other in names if exact_match(other, name)] == [name]
    assert exact_match("T-shirt", "t-shirt") and exact_match("Ankle boot.", "ankle boot")
    assert not exact_match("shirt", "t-shirt") and not exact_match("boot", "ankle boot")


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    mosaics.set_loader(lambda part: load_fashion_mnist(part, root=tmp_path))
    with pytest.raises(InputError, match="dataset-fashion-mnist"):
        mosaics.make_example("test", 0)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes((0, 0, 0x08, array.ndim)) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_idx_files_are_read_and_checked(tmp_path):
    images, labels = _synthetic("test")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    got_images, got_labels = load_fashion_mnist("test", root=tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:-1])
    with pytest.raises(InputError, match="matching"):
        load_fashion_mnist("test", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(InputError, match="not an idx file"):
        load_fashion_mnist("test", root=tmp_path)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * len(CLASSES)
    mosaics.set_loader(None)
    ex = mosaics.make_example("test", 0)
    assert ex.image.size == (SIZE, SIZE) and ex.answer


def test_photos_are_rgb_of_a_sane_size(tmp_path):
    for name in photos.PHOTOS:
        im = photos.photo(name)
        assert im.mode == "RGB" and 128 <= min(im.size) and max(im.size) <= 2048
    paths = photos.write_photos(tmp_path)
    assert [p.stem for p in paths] == list(photos.PHOTOS) and not list(tmp_path.glob("*.part"))
    with pytest.raises(InputError, match="astronaut"):
        photos.photo("lena")


def test_mixed_split_holds_both_sources(tmp_path):
    first = make_mixed_example("train", 3)
    assert first.question == make_mixed_example("train", 3).question
    path = write_mixed_split(tmp_path, "val", 12, ("mosaics",))
    assert {json.loads(line)["kind"] for line in path.read_text().splitlines()} <= set(QUESTION_TYPES)
    with pytest.raises(InputError):
        make_mixed_example("train", 0, ("scenes", "sketches"))


def test_cli_writes_a_mix(tmp_path):
    result = CliRunner().invoke(cli, ["data", str(tmp_path), "--source", "mix", "--split", "val", "-n", "16"],
                                standalone_mode=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert len(records) == 16 and kinds & set(SCENE_TYPES) and kinds & set(QUESTION_TYPES)
    assert all((tmp_path / r["image"]).is_file() for r in records)


def test_cli_writes_photos(tmp_path):
    result = CliRunner().invoke(cli, ["data", str(tmp_path), "--photos"], standalone_mode=False,
                                catch_exceptions=False)
    assert result.exit_code == 0 and (tmp_path / "astronaut.png").is_file()


def test_more_questions_about_a_mosaic_match_its_cells():
    rng = np.random.default_rng(1)
    for i in range(20):
        ex = mosaics.make_example("train", i)
        labels = [c.label for c in ex.cells if c is not None]
        for question, answer, kind in ex.more_questions(rng, 6):
            assert kind in QUESTION_TYPES
            if kind == "fashion_what":
                pos = POSITIONS.index(question.removeprefix("What item is in the ").removesuffix("?"))
                assert answer == CLASSES[ex.cells[pos].label].name
            if kind == "fashion_where":
                cell = ex.cells[POSITIONS.index(answer)]
                assert cell is not None and labels.count(cell.label) == 1 and CLASSES[cell.label].noun in question
            if kind == "fashion_count":
                garment = next(g for g in CLASSES if f"many {g.plural} are" in question)
                assert answer == NUMBERS[labels.count(CLASSES.index(garment))]


def test_patch_words_name_the_item_in_each_cell():
    ex = mosaics.make_example("train", 3)
    words = ex.patch_words(24)
    for pos, cell in enumerate(ex.cells):
        inside = {words[r * 24 + c] for r in range(24) for c in range(24) if (r // 12) * 2 + c // 12 == pos}
        expected = {("background",)} | ({(CLASSES[cell.label].name, *POSITIONS[pos].split())} if cell else set())
        assert inside <= expected and (cell is None or len(inside) == 2)
