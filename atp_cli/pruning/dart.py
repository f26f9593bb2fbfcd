"""DART (Wen et al., EMNLP 2025, "duplication matters more"): after layer K, keep the visual tokens that
duplicate least the few pivot tokens, instead of the "important" ones.

At the boundary (paper: K = 2) a few pivots are chosen - the visual and question tokens of the largest L1 norm
(the paper takes the norm of the layer's keys; the residual stream entering the next layer is what a module
sees here, so its norm is used) - and each pivot in turn claims its share of the budget: the tokens of the
remaining pool least cosine-similar to it. The visual pivots are kept too; question pivots only choose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.errors import InputError
from atp_cli.pruning.base import ModuleInput
from atp_cli.pruning.baselines import SingleBoundary, n_keep_of
from atp_cli.pruning.cdpruner import unit_rows


def _top_norm(rows: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-np.abs(rows).sum(1), kind="stable")[: min(n, len(rows))]


@dataclass(frozen=True)
class Dart(SingleBoundary):
    """After layer `k` keep `keep_ratio` of the visual tokens: `n_pivot_visual` + `n_pivot_text` pivots (paper:
    4 + 4), each taking an equal share of the least similar tokens."""

    n_pivot_visual: int = 4
    n_pivot_text: int = 4
    name: str = "dart"

    def __call__(self, view: ModuleInput) -> np.ndarray:
        if view.hidden_v is None or view.hidden_q is None:
            raise InputError("dart compares hidden states, and this module was given none")
        nv = len(view.visual_pos)
        n_keep = n_keep_of(self.keep_ratio, nv)
        pivots_v = _top_norm(view.hidden_v, min(self.n_pivot_visual, n_keep))
        pivots_q = _top_norm(view.hidden_q, self.n_pivot_text)
        anchors = [view.hidden_v[i] for i in pivots_v] + [view.hidden_q[i] for i in pivots_q]
        kept = set(int(i) for i in pivots_v)
        pool = np.setdiff1d(np.arange(nv), pivots_v)
        unit = unit_rows(view.hidden_v)
        share, extra = divmod(n_keep - len(kept), max(len(anchors), 1))
        for a, anchor in enumerate(anchors):
            take = min(share + (a < extra), len(pool))
            if take <= 0:
                continue
            sim = unit[pool] @ unit_rows(anchor[None])[0]
            chosen = pool[np.argsort(sim, kind="stable")[:take]]
            kept.update(int(i) for i in chosen)
            pool = np.setdiff1d(pool, chosen)
        return np.sort(view.visual_pos[np.fromiter(kept, dtype=np.int64)])
