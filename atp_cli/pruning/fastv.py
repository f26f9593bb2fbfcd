"""FastV (Chen et al., 2024): after layer K, keep the R visual tokens the last prompt token attends to most."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.driver import ModuleInput
from atp_cli.errors import InputError


@dataclass(frozen=True)
class FastV:
    """`k`: prune after layer k (the paper uses K=2); `keep_ratio`: fraction R of the visual tokens kept."""

    k: int = 2
    keep_ratio: float = 0.25
    name: str = "fastv"

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise InputError(f"keep ratio must be in (0, 1], got {self.keep_ratio}")
        if self.k < 1:
            raise InputError(f"FastV prunes after layer k >= 1, got {self.k}")

    def boundaries(self, n_layer: int) -> list[int]:
        if self.k >= n_layer:
            raise InputError(f"FastV layer k={self.k} is beyond the model's {n_layer} layers")
        return [self.k]

    def __call__(self, view: ModuleInput) -> np.ndarray:
        n_keep = max(1, round(self.keep_ratio * len(view.visual_pos)))
        scores = view.attn_tv[-1]  # (nv,) the last prompt token's head-mean attention
        top = np.argsort(-scores, kind="stable")[:n_keep]
        return np.sort(view.visual_pos[top])
