"""ATP configuration: the knobs of ATP_METHOD.md, stored in the model files."""

from __future__ import annotations

from dataclasses import dataclass

from atp_cli.errors import InputError

N_FEATURES = 10  # pooled statistics fed to the threshold MLP (pruning/atp.py: pooled_features)


@dataclass(frozen=True)
class AtpConfig:
    n_layer: int  # decoder depth this configuration is made for
    boundaries: tuple[int, ...]  # module m prunes from layer boundaries[m] on, reading layer boundaries[m] - 1
    strides: tuple[int, ...] = (2, 3, 4, 6, 8)
    lam: float = 3.0
    temperature: float = 10.0  # soft-mask sharpness in training
    grid: tuple[int, int] | None = None  # (H, W) of the visual tokens; None: square
    hidden: int = 64
    debias: bool = False  # relevance from distance-debiased attention (pruning.scores.relevance_debiased)

    def validate(self, n_layer: int | None = None) -> None:
        depth = self.n_layer if n_layer is None else n_layer
        if n_layer is not None and n_layer != self.n_layer:
            raise InputError(f"ATP weights are for {self.n_layer} decoder layers, the model has {n_layer}")
        b = list(self.boundaries)
        if not b or b != sorted(set(b)) or b[0] <= 0 or b[-1] >= depth:
            raise InputError(f"ATP boundaries must be strictly increasing inside (0, {depth}), got {b}")
        if not self.strides or min(self.strides) < 2:
            raise InputError(f"SAP strides must be >= 2, got {list(self.strides)}")
        if self.lam < 0 or self.temperature <= 0 or self.hidden < 1:
            raise InputError("lambda >= 0, temperature > 0 and hidden >= 1 are required")


def default_boundaries(n_layer: int) -> tuple[int, ...]:
    """Three modules spread like the paper's 32-layer example (after 4, 14, 24), scaled to the depth."""
    picks = sorted({max(1, round(n_layer * f)) for f in (5 / 32, 15 / 32, 25 / 32)})
    return tuple(b for b in picks if 0 < b < n_layer)
