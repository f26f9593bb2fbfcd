"""The hybrid: a pre-LLM selection (CDPruner) followed by in-LLM adaptive modules (ATP).

Pre-LLM rules make every layer cheaper but decide before the model has read the question in context; in-LLM
rules see the model's own attention but leave the first layers paying for every token. The hybrid keeps
`pre.n_keep` rows before the language model (so layers 0 .. b1-1 see only those) and lets the ATP modules prune
further at their boundaries, from what the model attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.pruning.base import ModuleInput, Strategy
from atp_cli.pruning.cdpruner import CDPruner


@dataclass(frozen=True)
class Hybrid:
    pre: CDPruner
    inner: Strategy
    name: str = "hybrid"

    def boundaries(self, n_layer: int) -> list[int]:
        return self.inner.boundaries(n_layer)

    def __call__(self, view: ModuleInput) -> np.ndarray:
        return self.inner(view)

    def select(self, rows: np.ndarray, query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.pre.select(rows, query)
