"""Distance-debiased relevance: attention that only follows distance scores flat, content stands out, and the
option travels with the ATP weights."""

from __future__ import annotations

import numpy as np

from atp_cli.pruning.atp import ThresholdMLP
from atp_cli.pruning.config import AtpConfig
from atp_cli.pruning.scores import (cross_modality, cross_modality_debiased, mean_one, self_modality,
                                    self_modality_debiased)
from atp_cli.pruning.store import AtpWeights, load_safetensors, save_safetensors


def _causal_recency(n: int, content: np.ndarray | None = None) -> np.ndarray:
    """Row-normalised causal attention decaying with distance (a_ij ~ (1 + i - j)^-1.5), times `content` per key."""
    i, j = np.indices((n, n))
    a = np.where(j <= i, (1.0 + np.abs(i - j)) ** -1.5, 0.0) * (1.0 if content is None else content[None, :])
    return a / a.sum(1, keepdims=True)


def test_recency_alone_is_flat_after_debiasing_but_not_before():
    n = 64
    a = _causal_recency(n)
    raw, fixed = mean_one(self_modality(a)), mean_one(self_modality_debiased(a))
    assert raw[-8:].mean() > 2 * raw[:8].mean()  # the raw score favours the last tokens
    assert np.abs(fixed - 1).max() < 0.35 and np.abs(fixed[-8:].mean() - fixed[:8].mean()) < 0.2


def test_content_stands_out_of_the_distance_trend():
    n = 64
    content = np.ones(n)
    content[10:14] = 4.0  # four keys the queries look at four times as much as their distance explains
    fixed = mean_one(self_modality_debiased(_causal_recency(n, content)))
    assert fixed[10:14].min() > 1.5 * np.median(fixed)


def test_cross_scores_lose_the_pull_of_the_last_rows():
    nv, nq = 48, 5
    visual_pos, query_pos = np.arange(nv), nv + np.arange(nq)
    d = query_pos[:, None] - visual_pos[None, :]
    content = np.ones(nv)
    content[5:8] = 3.0
    a = (d.astype(float) ** -1.2) * content[None, :]
    a /= a.sum(1, keepdims=True)
    raw = mean_one(cross_modality(a))
    fixed = mean_one(cross_modality_debiased(a, query_pos, visual_pos))
    assert raw[-4:].mean() > raw[5:8].mean()  # raw: the rows next to the question beat the content
    assert fixed[5:8].mean() > 1.5 * fixed[-4:].mean()  # debiased: the content wins


def test_the_option_is_stored_with_the_weights(tmp_path):
    w = AtpWeights(AtpConfig(4, (1, 3), grid=(8, 8), hidden=2, debias=True),
                   (ThresholdMLP.constant(1.0, 0.5, hidden=2),) * 2)
    save_safetensors(w, tmp_path / "w.safetensors")
    assert load_safetensors(tmp_path / "w.safetensors").config.debias
    assert w.metadata()["atp.scores.debias"] is True
    assert "atp.scores.debias" not in AtpWeights(AtpConfig(4, (1, 3), hidden=2), w.mlps).metadata()
