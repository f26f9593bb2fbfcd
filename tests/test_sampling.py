"""Sampler behaviour on hand-made logits (no native library)."""

from __future__ import annotations

import numpy as np
import pytest

from atp_cli.errors import InputError
from atp_cli.sampling import Sampler, SamplerConfig

LOGITS = np.array([0.0, 3.0, 1.0, 2.9, -5.0], dtype=np.float32)


def test_greedy_is_argmax():
    assert Sampler().sample(LOGITS) == 1


def test_seed_reproduces_and_temperature_spreads():
    draws = lambda seed: [Sampler(SamplerConfig(1.0, 1.0, seed)).sample(LOGITS) for _ in range(1)]  # noqa: E731
    assert draws(3) == draws(3)
    s = Sampler(SamplerConfig(temperature=2.0, seed=0))
    seen = {s.sample(LOGITS) for _ in range(200)}
    assert {1, 2, 3} <= seen


def test_top_p_restricts_to_the_nucleus():
    s = Sampler(SamplerConfig(temperature=1.0, top_p=0.5, seed=1))
    assert {s.sample(LOGITS) for _ in range(100)} <= {1, 3}
    s = Sampler(SamplerConfig(temperature=1.0, top_p=0.01, seed=1))
    assert {s.sample(LOGITS) for _ in range(20)} == {1}


@pytest.mark.parametrize("cfg", [SamplerConfig(temperature=-1), SamplerConfig(top_p=0.0), SamplerConfig(top_p=1.5)])
def test_bad_sampler_settings(cfg):
    with pytest.raises(InputError):
        Sampler(cfg)
