"""Token sampling from logits: greedy, temperature, nucleus (top-p), seeded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.errors import InputError


@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 0.0  # <= 0: greedy
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be an integer in [0, 2**63), got {self.seed}")


class Sampler:
    """Draws token ids; the seed makes a whole generation reproducible."""

    def __init__(self, config: SamplerConfig = SamplerConfig()) -> None:
        config.validate()
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def state(self) -> dict:
        """The random state, to undo the draws of an interrupted turn with `restore`."""
        return self._rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    def sample(self, logits: np.ndarray) -> int:
        if self.config.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.config.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.config.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            cut = int(np.searchsorted(cum, self.config.top_p)) + 1  # smallest prefix reaching top_p
            keep = order[:cut]
            q = p[keep] / p[keep].sum()
            return int(keep[self._rng.choice(len(keep), p=q)])
        return int(self._rng.choice(len(p), p=p))
