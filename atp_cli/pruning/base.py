"""The interface every strategy implements for the driver."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from atp_cli.driver import ModuleInput


class Strategy(Protocol):
    """Where to prune (boundaries for a given depth) and what to keep there."""

    name: str

    def boundaries(self, n_layer: int) -> list[int]:
        """Layers at which a module runs (first layer that no longer sees the dropped tokens)."""
        ...

    def __call__(self, view: ModuleInput) -> np.ndarray:
        """Kept visual positions: a non-empty ascending subset of view.visual_pos."""
        ...
