"""Pruning maths on hand-built attention matrices (no native library)."""

from __future__ import annotations

import numpy as np
import pytest

from atp_cli.pruning.base import ModuleInput
from atp_cli.errors import InputError
from atp_cli.pruning.atp import AtpFreeStrategy, AtpStrategy, ThresholdMLP, mass_keep
from atp_cli.pruning.baselines import FastV, PyramidDrop, RandomKeep, UniformGrid
from atp_cli.pruning.config import N_FEATURES, AtpConfig, default_boundaries
from atp_cli.pruning.sap import grid_shape, on_grid, raster_coords, spatial_scores
from atp_cli.pruning.scores import cross_modality, mean_one, relevance, self_modality


def causal_uniform_value(nv: int, c: float = 0.01) -> np.ndarray:
    """Every visual query pays the same weight c to every visual key it can see."""
    return np.tril(np.full((nv, nv), c))


def make_view(nv: int = 16, origin: int = 5, attn_vv=None, attn_tv=None, alive=None, boundary: int = 2):
    alive = np.arange(nv) if alive is None else np.asarray(alive)
    pos = origin + alive
    n = len(alive)
    attn_vv = causal_uniform_value(n) if attn_vv is None else attn_vv
    attn_tv = np.full((3, n), 1.0 / n) if attn_tv is None else attn_tv
    return ModuleInput(boundary, boundary - 1, pos, np.arange(3) + origin + nv, attn_vv, attn_tv, origin, 8)


def test_self_score_is_causally_normalised():
    a = causal_uniform_value(8)
    np.testing.assert_allclose(self_modality(a), 0.01)  # every token equally important
    biased = a.sum(0) / 8  # a plain column mean favours early tokens
    assert biased[0] > biased[-1] * 7


def test_relevance_mean_one_and_both_modalities():
    a = causal_uniform_value(6)
    t = np.zeros((2, 6))
    t[:, 4] = 1.0  # the text looks only at token 4
    r = relevance(a, t)
    assert r.mean() == pytest.approx(1.0)
    assert int(np.argmax(r)) == 4
    np.testing.assert_allclose(relevance(a, np.zeros((0, 6))), 1.0)  # no text: self score alone
    np.testing.assert_allclose(cross_modality(t), [0, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(mean_one(np.zeros(3)), 1.0)


def test_nan_attention_is_refused():
    a = causal_uniform_value(4)
    a[2, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        relevance(a, np.zeros((1, 4)))


def test_sap_grid_membership_and_scores():
    rows, cols = raster_coords(np.arange(64), (8, 8))
    s = spatial_scores(rows, cols, (2, 4), lam=3.0)
    grid = s.reshape(8, 8)
    assert grid[0, 0] == grid[4, 4] == pytest.approx(1 - 3 / 16)
    assert grid[2, 0] == grid[6, 2] == pytest.approx(1 - 3 / 4)
    assert grid[1, 0] == grid[3, 3] == 0.0
    assert (on_grid(rows, cols, 4) <= on_grid(rows, cols, 2)).all()  # nested
    assert on_grid(rows, cols, 4).sum() == 4


def test_grid_shape_checks():
    assert grid_shape(576) == (24, 24)
    assert grid_shape(12, (3, 4)) == (3, 4)
    with pytest.raises(InputError, match="square"):
        grid_shape(10)
    with pytest.raises(InputError, match="does not match"):
        grid_shape(12, (4, 4))


def test_mass_keep_is_the_smallest_set():
    r = np.array([0.1, 4.0, 0.5, 3.0, 0.4])
    assert mass_keep(r, 0.5).tolist() == [False, True, False, False, False]
    assert mass_keep(r, 0.8).tolist() == [False, True, False, True, False]
    assert mass_keep(r, 1.0).all()


def _config(**kw) -> AtpConfig:
    return AtpConfig(n_layer=8, boundaries=(2, 5), grid=(4, 4), **kw)


def test_atp_free_keeps_mass_plus_grid_and_nests():
    strat = AtpFreeStrategy(_config(), mass=[0.3, 0.3], stride=[2, 0], n_visual=16)
    t = np.zeros((3, 16))
    t[:, 7] = 1.0
    kept1 = strat(make_view(attn_tv=t))
    raster = kept1 - 5
    assert 7 in raster and {0, 2, 8, 10} <= set(raster.tolist())
    alive = raster
    view2 = make_view(alive=alive, attn_tv=t[:, alive], boundary=5)
    kept2 = strat(view2)
    assert set(kept2.tolist()) <= set(kept1.tolist())


def _mlp(bias_r: float, bias_sp: float) -> ThresholdMLP:
    h = 4
    return ThresholdMLP(np.zeros((h, N_FEATURES)), np.zeros(h), np.zeros((2, h)), np.array([bias_r, bias_sp]))


def test_atp_thresholds_decide_the_keep_set():
    t = np.zeros((3, 16))
    t[:, [3, 9]] = 1.0
    # theta_r = softplus(2) ~ 2.13, theta_sp = sigmoid(10) ~ 1: only tokens far above mean relevance survive
    strict = AtpStrategy(_config(), [_mlp(2.0, 10.0)] * 2, n_visual=16)
    kept = strict(make_view(attn_tv=t)) - 5
    assert set(kept.tolist()) <= {3, 9} and len(kept) >= 1
    # theta_sp = sigmoid(-10) ~ 0: the whole SAP grid survives too
    loose = AtpStrategy(_config(), [_mlp(2.0, -10.0)] * 2, n_visual=16)
    kept = set((loose(make_view(attn_tv=t)) - 5).tolist())
    assert {0, 2, 8, 10} <= kept
    assert len(loose.last_thresholds) == 1


def test_constant_thresholds_ignore_the_image():
    rng = np.random.default_rng(3)
    mlp = ThresholdMLP.constant(0.9, 0.8, hidden=3)
    for _ in range(3):
        np.testing.assert_allclose(mlp.thresholds(rng.normal(size=N_FEATURES) * 10), (0.9, 0.8), rtol=1e-6)
    for bad in ((0.0, 0.5), (1.0, 1.0), (1.0, 0.0)):
        with pytest.raises(InputError, match="constant thresholds"):
            ThresholdMLP.constant(*bad)


def test_bisect_level_meets_a_monotone_count():
    from atp_cli.calibration import bisect_level

    seen = []

    def count(x: float) -> float:  # tokens grow with the level, in steps as real counts do
        seen.append(x)
        return float(np.floor(576 * x**2))

    level, achieved = bisect_level(count, 144.0, 1e-4, 1.0)
    assert abs(achieved - 144.0) <= 2 and abs(level - 0.5) < 0.01 and len(seen) == 16
    assert bisect_level(count, 600.0, 0.1, 0.9) == (0.9, float(np.floor(576 * 0.81)))  # above what hi keeps
    assert bisect_level(count, 1.0, 0.5, 0.9) == (0.5, 144.0)  # below what lo keeps


def test_atp_config_mismatches():
    with pytest.raises(InputError, match="8 decoder layers"):
        _config().validate(n_layer=32)
    with pytest.raises(InputError, match="boundaries"):
        AtpConfig(n_layer=8, boundaries=(2, 9)).validate()
    with pytest.raises(InputError, match="does not match"):
        AtpStrategy(_config(), [_mlp(0, 0)] * 2, n_visual=20)
    with pytest.raises(InputError, match="threshold MLPs"):
        AtpStrategy(_config(), [_mlp(0, 0)], n_visual=16)
    with pytest.raises(InputError, match="shapes"):
        ThresholdMLP(np.zeros((4, 3)), np.zeros(4), np.zeros((2, 4)), np.zeros(2))
    assert default_boundaries(32) == (5, 15, 25)


def test_baselines_keep_their_budgets():
    t = np.zeros((3, 16))
    t[-1, [1, 4, 6, 11]] = [0.4, 0.3, 0.2, 0.1]
    view = make_view(attn_tv=t)
    assert (FastV(k=2, keep_ratio=0.25)(view) - 5).tolist() == [1, 4, 6, 11]
    assert len(PyramidDrop()(view)) == 8
    assert PyramidDrop().boundaries(32) == [8, 16, 24]
    assert len(UniformGrid(keep_ratio=0.25)(view)) == 4
    r = RandomKeep(keep_ratio=0.5, seed=3)
    assert r(view).tolist() == r(view).tolist() and len(r(view)) == 8
    with pytest.raises(InputError):
        FastV(keep_ratio=0.0)
    with pytest.raises(InputError, match="outside"):
        FastV(k=40).boundaries(32)
