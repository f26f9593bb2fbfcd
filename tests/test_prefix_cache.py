"""The prefix cache: strategies that share their first boundary compute the layers before it once per prompt, and
answer exactly as they do when each computes them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from tests.test_pipeline import folder, images  # noqa: E402,F401

# strategies whose first module sits after layer 1 of the tiny model, at their own parameters
SHARED = [("fastv", {"k": 1, "ratio": 0.5}), ("uniform", {"k": 1, "ratio": 0.3}), ("random", {"k": 1, "ratio": 0.4}),
          ("dart", {"k": 1, "ratio": 0.5})]


def answers(folder, cache_bytes: int):  # noqa: F811
    cfg = PipelineConfig(context=ContextConfig(n_ctx=512, n_threads=1), max_tokens=12, prefix_cache_bytes=cache_bytes)
    out = []
    with Pipeline.from_dir(folder, "none", cfg) as pipe:
        for name, params in SHARED:
            pipe.set_strategy(name, **params)
            for img in images(3, seed=11):
                r = pipe(img, "what is in the picture")
                out.append((name, r.text, r.first_logprobs, r.stats.visual_alive_per_layer.tolist(),
                            r.stats.reused_seconds, r.first_token_seconds))
        hits = pipe.prefixes.hits if pipe.prefixes is not None else 0
    return out, hits


def test_shared_first_segments_answer_as_computed_ones(folder):  # noqa: F811
    plain, _ = answers(folder, 0)
    shared, hits = answers(folder, 64 * 2**20)
    assert hits == (len(SHARED) - 1) * 3  # every strategy after the first loads the 3 prompts' first segment
    for (name, text, lp, alive, _, _), (name2, text2, lp2, alive2, reused, ttft) in zip(plain, shared):
        assert name == name2 and text == text2 and alive == alive2  # 12 tokens decoded over the loaded cache
        np.testing.assert_allclose(lp2, lp, atol=1e-5)
        assert ttft >= reused >= 0.0
    assert all(r[4] == 0.0 for r in shared[:3]) and any(r[4] > 0.0 for r in shared[3:])
