"""Baseline pruners run through the same driver (ATP_METHOD.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.pruning.base import ModuleInput
from atp_cli.errors import InputError


def n_keep_of(ratio: float, n: int) -> int:
    return max(1, min(n, round(ratio * n)))


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"keep ratio must be in (0, 1], got {ratio}")


def top_by_last_query(view: ModuleInput, n_keep: int) -> np.ndarray:
    """The n_keep alive visual tokens the last prompt token attends to most, ascending positions."""
    if view.attn_tv.shape[0] == 0:
        raise InputError("this strategy ranks by the last text token's attention, but no text follows the image")
    top = np.argsort(-view.attn_tv[-1], kind="stable")[:n_keep]
    return np.sort(view.visual_pos[top])


@dataclass(frozen=True)
class SingleBoundary:
    """Prune once, after layer `k`, keeping the fraction `keep_ratio` of the visual tokens."""

    k: int = 2
    keep_ratio: float = 0.25

    def __post_init__(self) -> None:
        check_ratio(self.keep_ratio)

    def boundaries(self, n_layer: int) -> list[int]:
        if not 0 < self.k < n_layer:
            raise InputError(f"{type(self).__name__} layer k={self.k} is outside (0, {n_layer})")
        return [self.k]


@dataclass(frozen=True)
class FastV(SingleBoundary):
    """FastV (Chen et al., 2024): after layer `k` (paper: K=2), keep the fraction `keep_ratio` (R) of the
    visual tokens that the last prompt token attends to most."""

    name: str = "fastv"

    def __call__(self, view: ModuleInput) -> np.ndarray:
        return top_by_last_query(view, n_keep_of(self.keep_ratio, len(view.visual_pos)))


@dataclass(frozen=True)
class PyramidDrop:
    """PyramidDrop (Xing et al., 2024): at 1/4, 2/4, 3/4 of the depth (8/16/24 of 32), keep the top
    `keep_ratio` (paper: 0.5) of the alive tokens by the last instruction token's attention."""

    keep_ratio: float = 0.5
    stages: tuple[float, ...] = (0.25, 0.5, 0.75)  # fractions of the depth where a stage starts
    name: str = "pdrop"

    def __post_init__(self) -> None:
        check_ratio(self.keep_ratio)
        if not self.stages or any(not 0 < f < 1 for f in self.stages):
            raise InputError(f"pdrop stages must be fractions of the depth in (0, 1), got {self.stages}")

    def boundaries(self, n_layer: int) -> list[int]:
        return sorted({b for b in (round(n_layer * f) for f in self.stages) if 0 < b < n_layer})

    def __call__(self, view: ModuleInput) -> np.ndarray:
        return top_by_last_query(view, n_keep_of(self.keep_ratio, len(view.visual_pos)))


@dataclass(frozen=True)
class UniformGrid(SingleBoundary):
    """Keep `keep_ratio` of the tokens, evenly spaced in raster order, after layer `k` (text-independent)."""

    name: str = "uniform"

    def __call__(self, view: ModuleInput) -> np.ndarray:
        n = len(view.visual_pos)
        idx = np.unique(np.linspace(0, n - 1, n_keep_of(self.keep_ratio, n)).round().astype(int))
        return view.visual_pos[idx]


@dataclass(frozen=True)
class RandomKeep(SingleBoundary):
    """Keep a seeded random `keep_ratio` of the tokens after layer `k`."""

    seed: int = 0
    name: str = "random"

    def __call__(self, view: ModuleInput) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        n = len(view.visual_pos)
        return np.sort(rng.choice(view.visual_pos, n_keep_of(self.keep_ratio, n), replace=False))


@dataclass(frozen=True)
class NoPruning:
    """Every visual token in every layer."""

    name: str = "none"

    def boundaries(self, n_layer: int) -> list[int]:
        return []

    def __call__(self, view: ModuleInput) -> np.ndarray:
        return view.visual_pos
