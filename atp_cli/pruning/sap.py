"""Spatial Augmented Pruning: a text-independent score that keeps a uniform grid skeleton of the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atp_cli.errors import InputError


def grid_shape(n_visual: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) raster of the visual tokens: `grid` if given, else the square that holds n_visual."""
    if grid is not None:
        h, w = grid
        if h * w != n_visual:
            raise InputError(f"grid {h}x{w} does not match {n_visual} visual tokens")
        return h, w
    side = int(round(np.sqrt(n_visual)))
    if side * side != n_visual:
        raise InputError(f"{n_visual} visual tokens do not form a square grid; give the grid explicitly")
    return side, side


def raster_coords(raster_index: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of raster indices on an H x W grid."""
    h, w = shape
    if raster_index.size and (raster_index.min() < 0 or raster_index.max() >= h * w):
        raise InputError(f"visual raster index outside the {h}x{w} grid")
    return raster_index // w, raster_index % w


def on_grid(rows: np.ndarray, cols: np.ndarray, stride: int) -> np.ndarray:
    """Membership of the uniform grid of `stride` anchored at (0, 0); grids nest when strides divide."""
    return (rows % stride == 0) & (cols % stride == 0)


def spatial_scores(rows: np.ndarray, cols: np.ndarray, strides: Sequence[int], lam: float) -> np.ndarray:
    """s_sp(j) = max over grids containing j of (1 - lam / stride^2); 0 on no grid.

    Coarser grids score higher, so a higher spatial threshold keeps a sparser skeleton.
    """
    if any(s < 2 for s in strides):
        raise InputError(f"SAP strides must be >= 2, got {list(strides)}")
    score = np.zeros(rows.shape, dtype=np.float64)
    for s in strides:
        score = np.where(on_grid(rows, cols, s), np.maximum(score, 1.0 - lam / s**2), score)
    return score
