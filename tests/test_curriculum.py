"""Easy-first training: generated records say how many things their image shows, and stage 2 can draw the
records with few objects first and every record by the end of its ramp."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from atp_cli.data import mosaics  # noqa: E402
from atp_cli.data.mix import make_mixed_example, write_mixed_split  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.llava_data import Sample, load_samples  # noqa: E402
from atp_cli.train.projector import ProjectorConfig, _order, train_projector  # noqa: E402


@pytest.fixture(autouse=True)
def synthetic_items():
    """Fashion-MNIST stand-ins: a bright square per item, the labels cycling through the classes."""
    images = np.zeros((120, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = 255
    mosaics.set_loader(lambda part: (images, (np.arange(120) % len(mosaics.CLASSES)).astype(np.uint8)))
    yield
    mosaics.set_loader(None)


def test_records_count_the_shapes_the_word_and_the_filled_cells(tmp_path):
    path = write_mixed_split(tmp_path, "val", 24, ("scenes", "mosaics"))
    samples = load_samples(path)
    for i, sample in enumerate(samples):
        ex = make_mixed_example("val", i, ("scenes", "mosaics"))
        expected = (len(ex.items) + (ex.word is not None) if hasattr(ex, "items")
                    else sum(c is not None for c in ex.cells))
        assert sample.objects == expected >= 1
    assert len({s.objects for s in samples}) > 1


def test_a_record_without_a_count_loads_and_a_bad_count_is_refused(tmp_path):
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    record = {"image": "a.png", "conversations": turns}
    (tmp_path / "plain.jsonl").write_text(json.dumps(record))
    assert load_samples(tmp_path / "plain.jsonl")[0].objects is None
    for bad in (-1, 2.5, "three", True):
        (tmp_path / "bad.jsonl").write_text(json.dumps({**record, "objects": bad}))
        with pytest.raises(InputError, match="objects"):
            load_samples(tmp_path / "bad.jsonl")


def _samples(n: int = 400) -> list[Sample]:
    return [Sample(Path(f"{i}.png"), (("q", "a"),), ("colour",), 1 + i % 8) for i in range(n)]


def test_curriculum_draws_few_objects_first_and_everything_by_the_end():
    samples = _samples()
    ramp = 800
    order = _order(samples, seed=3, curriculum=ramp)
    drawn = [next(order) for _ in range(ramp)]
    first, last = drawn[: ramp // 8], drawn[-ramp // 8:]
    assert max(s.objects for s in first) <= 2  # the easiest quarter of the ranking at first: 1 and 2 objects
    assert np.mean([s.objects for s in first]) < np.mean([s.objects for s in last]) - 2
    assert {s.objects for s in last} == set(range(1, 9))  # by the end of the ramp every difficulty is in play
    after = [next(order) for _ in range(len(samples))]  # then plain epochs: each record once
    assert Counter(id(s) for s in after) == Counter(id(s) for s in samples)


def test_without_a_curriculum_the_order_is_the_plain_epochs():
    samples = _samples(50)
    plain, zero = _order(samples, seed=1), _order(samples, seed=1, curriculum=0)
    assert [next(plain) for _ in range(120)] == [next(zero) for _ in range(120)]


def test_records_without_a_count_are_spread_over_the_ramp():
    samples = _samples(200) + [Sample(Path(f"x{i}.png"), (("q", "a"),)) for i in range(100)]
    order = _order(samples, seed=5, curriculum=600)
    drawn = [next(order) for _ in range(600)]
    unknown = [k for k, s in enumerate(drawn) if s.objects is None]
    assert unknown and min(unknown) < 150 and max(unknown) > 450


def test_a_curriculum_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(InputError, match="curriculum"):
        train_projector(tmp_path / "ckpt", tmp_path / "data.jsonl", tmp_path / "out",
                        ProjectorConfig(steps=10, curriculum=11))
