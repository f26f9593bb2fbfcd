"""The embedding cache: an image is encoded once for every question, strategy and conversation about it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from dataclasses import replace  # noqa: E402

from atp_cli.embedding_cache import EmbeddingCache, image_key  # noqa: E402
from atp_cli.pipeline import Pipeline  # noqa: E402
from tests.test_pipeline import CFG, folder, images  # noqa: E402,F401


def test_lru_within_its_byte_bound_and_read_only():
    cache = EmbeddingCache(max_bytes=3 * 400)
    rows = [np.full((10, 10), i, np.float32) for i in range(4)]  # 400 bytes each
    for i, r in enumerate(rows[:3]):
        cache.put(f"k{i}", r)
    assert cache.get("k0") is not None  # k0 is now the most recent
    cache.put("k3", rows[3])
    assert cache.get("k1") is None and cache.get("k0") is not None and len(cache) == 3 and cache.bytes == 1200
    kept = cache.get("k3")
    with pytest.raises(ValueError):
        kept[0, 0] = 1.0
    assert EmbeddingCache(0).put("x", rows[0]) is not None and len(EmbeddingCache(0)) == 0


def test_the_key_is_the_content():
    a, b = images(2)
    assert image_key(a) == image_key(a.copy()) == image_key(a.convert("RGBA").convert("RGB"))
    assert image_key(a) != image_key(b)


def test_a_second_question_strategy_or_conversation_does_not_encode_again(folder, monkeypatch):  # noqa: F811
    with Pipeline.from_dir(folder, "fastv", CFG, k=1, ratio=0.5) as pipe:
        calls = []
        real = pipe.encoder.encode
        monkeypatch.setattr(pipe.encoder, "encode", lambda image: calls.append(1) or real(image))
        img = images(1, seed=9)[0]
        first = pipe(img, "what is in the picture")
        second = pipe(img.copy(), "and the colour")
        pipe.set_strategy("uniform")
        pipe(img, "what is in the picture")
        conv = pipe.conversation()
        conv.set_image(img)
        "".join(conv.ask("what is it"))
        assert len(calls) == 1 and pipe.embeddings.hits == 3
        assert first.text and second.stats.n_visual == first.stats.n_visual
        pipe(images(1, seed=10)[0], "what is in the picture")
        assert len(calls) == 2
    with Pipeline.from_dir(folder, "fastv", replace(CFG, embedding_cache_bytes=0), k=1, ratio=0.5) as off:
        off(img, "what"), off(img, "what")
        assert off.embeddings.hits == 0 and len(off.embeddings) == 0
