"""research/oracle_ceiling.py: the oracle rows belong to the very image the record shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atp_cli.data import mosaics
from atp_cli.data.mix import write_mixed_split
from atp_cli.data.scenes import PROMPT_SUFFIX
from atp_cli.train.align import POSITION_WORDS, WordTargets
from atp_cli.train.data import load_samples
from research.oracle_ceiling import example_of, oracle_tokens
from tests.test_mosaics import _synthetic


@pytest.fixture(autouse=True)
def synthetic_items():
    mosaics.set_loader(_synthetic)
    yield
    mosaics.set_loader(None)


class _OneIdPerWord:
    """A tokenizer stand-in: each distinct word gets its own id."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.ids.setdefault(text.strip(), len(self.ids))]}


def test_each_record_regenerates_its_own_image_and_patches(tmp_path):
    samples = load_samples(write_mixed_split(tmp_path, "val", 6, turns=2))
    sources = set()
    for sample in samples:
        example = example_of(sample)
        sources.add(type(example).__name__)
        assert np.array_equal(np.asarray(example.image.convert("RGB")),
                              np.asarray(Image.open(sample.image).convert("RGB")))
        assert sample.question == example.question + PROMPT_SUFFIX and sample.answer == example.answer
    assert sources == {"SceneExample", "MosaicExample"}


def test_oracle_rows_are_the_words_of_the_patch(tmp_path):
    sample = load_samples(write_mixed_split(tmp_path, "val", 1, turns=1))[0]
    tokenizer = _OneIdPerWord()
    embed = torch.eye(64)
    rows = oracle_tokens(WordTargets(tokenizer, embed), positions=False)(sample)
    words = example_of(sample).patch_words(24)
    assert rows.shape == (576, 64)
    for row, patch in zip(rows, words):
        kept = [w for w in patch if w not in POSITION_WORDS]
        expected = torch.zeros(64)
        expected[[tokenizer.ids[w] for w in kept]] = 1.0 / len(kept)
        assert torch.allclose(row, expected)
