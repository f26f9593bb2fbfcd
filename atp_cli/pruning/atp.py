"""ATP itself: relevance + SAP scores, thresholds predicted per image, and the keep rule.

`AtpStrategy` uses trained threshold MLPs (one per module); `AtpFreeStrategy` needs no training: it keeps
the smallest set of tokens holding a fraction p_m of the relevance mass plus an SAP grid of stride k_m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.pruning.base import ModuleInput
from atp_cli.errors import InputError
from atp_cli.pruning.config import N_FEATURES, AtpConfig
from atp_cli.pruning.sap import grid_shape, on_grid, raster_coords, spatial_scores
from atp_cli.pruning.scores import relevance, relevance_debiased

_QUANTILES = (0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class ModuleScores:
    relevance: np.ndarray  # (nv,) s_r, mean 1
    spatial: np.ndarray  # (nv,) s_sp in [0, 1)
    rows: np.ndarray  # (nv,) raster row
    cols: np.ndarray  # (nv,) raster column
    alive_fraction: float  # alive visual tokens / all visual tokens of the image


def module_scores(view: ModuleInput, config: AtpConfig, n_visual: int) -> ModuleScores:
    shape = grid_shape(n_visual, config.grid)
    rows, cols = raster_coords(view.visual_pos - view.visual_origin, shape)
    return ModuleScores(
        relevance=(relevance_debiased(view.attn_vv, view.attn_tv, view.query_pos, view.visual_pos) if config.debias
                   else relevance(view.attn_vv, view.attn_tv)),
        spatial=spatial_scores(rows, cols, config.strides, config.lam),
        rows=rows,
        cols=cols,
        alive_fraction=len(view.visual_pos) / n_visual,
    )


def pooled_features(s: ModuleScores) -> np.ndarray:
    """(N_FEATURES,) statistics the threshold MLP reads: s_r mean/std/max/quantiles, s_sp mean/coverage,
    alive fraction."""
    r = s.relevance
    f = np.array(
        [r.mean(), r.std(), r.max(), *np.quantile(r, _QUANTILES), s.spatial.mean(), (s.spatial > 0).mean(),
         s.alive_fraction],
        dtype=np.float64,
    )
    assert f.shape == (N_FEATURES,)
    return f


@dataclass(frozen=True)
class ThresholdMLP:
    """fc1 -> ReLU -> fc2 -> (softplus, sigmoid): per-image thresholds (theta_r, theta_sp)."""

    fc1_w: np.ndarray  # (hidden, N_FEATURES)
    fc1_b: np.ndarray  # (hidden,)
    fc2_w: np.ndarray  # (2, hidden)
    fc2_b: np.ndarray  # (2,)

    def __post_init__(self) -> None:
        h = self.fc1_w.shape[0]
        shapes = [self.fc1_w.shape, self.fc1_b.shape, self.fc2_w.shape, self.fc2_b.shape]
        if shapes != [(h, N_FEATURES), (h,), (2, h), (2,)]:
            raise InputError(f"threshold MLP shapes {shapes} do not match ({h}, {N_FEATURES}) -> 2")

    @classmethod
    def constant(cls, theta_r: float, theta_sp: float, hidden: int = 1) -> ThresholdMLP:
        """An MLP that predicts (theta_r, theta_sp) for every image: a fixed-threshold rule in the trained rule's
        form, and a starting point for training that begins where a calibrated rule already works."""
        if theta_r <= 0 or not 0 < theta_sp < 1:
            raise InputError(f"constant thresholds need theta_r > 0 and 0 < theta_sp < 1, got {theta_r}, {theta_sp}")
        z = np.array([theta_r + np.log(-np.expm1(-theta_r)), np.log(theta_sp / (1 - theta_sp))], dtype=np.float32)
        zeros = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
        return cls(zeros(hidden, N_FEATURES), zeros(hidden), zeros(2, hidden), z)

    def thresholds(self, features: np.ndarray) -> tuple[float, float]:
        z = self.fc2_w @ np.maximum(self.fc1_w @ features + self.fc1_b, 0.0) + self.fc2_b
        theta_r = float(np.logaddexp(0.0, z[0]))  # softplus
        theta_sp = float(1.0 / (1.0 + np.exp(-z[1])))  # sigmoid
        return theta_r, theta_sp


def keep_nonempty(view: ModuleInput, keep: np.ndarray, fallback_score: np.ndarray) -> np.ndarray:
    """Kept positions; if the rule kept nothing, the single highest-scoring token survives."""
    if not keep.any():
        keep = np.zeros_like(keep)
        keep[int(np.argmax(fallback_score))] = True
    return view.visual_pos[keep]


class AtpStrategy:
    """Trained ATP: keep j iff s_r(j) > theta_r or s_sp(j) > theta_sp."""

    name = "atp"

    def __init__(self, config: AtpConfig, mlps: list[ThresholdMLP], n_visual: int) -> None:
        config.validate()
        if len(mlps) != len(config.boundaries):
            raise InputError(f"{len(mlps)} threshold MLPs for {len(config.boundaries)} modules")
        grid_shape(n_visual, config.grid)
        self.config, self.mlps, self.n_visual = config, mlps, n_visual
        self.last_thresholds: list[tuple[float, float]] = []

    def boundaries(self, n_layer: int) -> list[int]:
        self.config.validate(n_layer)
        self.last_thresholds = []
        return list(self.config.boundaries)

    def __call__(self, view: ModuleInput) -> np.ndarray:
        m = self.config.boundaries.index(view.boundary)
        s = module_scores(view, self.config, self.n_visual)
        theta_r, theta_sp = self.mlps[m].thresholds(pooled_features(s))
        self.last_thresholds.append((theta_r, theta_sp))
        keep = (s.relevance > theta_r) | (s.spatial > theta_sp)
        return keep_nonempty(view, keep, s.relevance)


def mass_keep(relevance: np.ndarray, mass: float) -> np.ndarray:
    """Mask of the smallest set of tokens whose relevance sums to at least `mass` of the total."""
    order = np.argsort(-relevance, kind="stable")
    cum = np.cumsum(relevance[order]) / max(float(relevance.sum()), 1e-12)
    n = min(len(order), int(np.searchsorted(cum, mass - 1e-12)) + 1)
    keep = np.zeros(len(relevance), dtype=bool)
    keep[order[:n]] = True
    return keep


class AtpFreeStrategy:
    """Training-free ATP: relevance mass p_m plus the SAP grid of stride k_m at module m."""

    name = "atp-free"

    def __init__(self, config: AtpConfig, mass: list[float], stride: list[int], n_visual: int) -> None:
        config.validate()
        if len(mass) != len(config.boundaries) or len(stride) != len(config.boundaries):
            raise InputError(f"atp-free needs one mass and one stride per module ({len(config.boundaries)})")
        if any(not 0.0 < p <= 1.0 for p in mass) or any(k < 0 or k == 1 for k in stride):
            raise InputError(f"masses must be in (0, 1] and strides 0 (no grid) or >= 2, got {mass}, {stride}")
        grid_shape(n_visual, config.grid)
        self.config, self.mass, self.stride, self.n_visual = config, list(mass), list(stride), n_visual

    def boundaries(self, n_layer: int) -> list[int]:
        self.config.validate(n_layer)
        return list(self.config.boundaries)

    def __call__(self, view: ModuleInput) -> np.ndarray:
        m = self.config.boundaries.index(view.boundary)
        s = module_scores(view, self.config, self.n_visual)
        keep = mass_keep(s.relevance, self.mass[m])
        if self.stride[m]:
            keep |= on_grid(s.rows, s.cols, self.stride[m])
        return keep_nonempty(view, keep, s.relevance)
