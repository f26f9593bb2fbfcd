"""CDPruner (Zhang et al., NeurIPS 2025): before the language model, keep the visual tokens that are most
diverse *given the instruction*, by a conditional determinantal point process.

The DPP kernel is L = diag(r) S diag(r): S the cosine similarity of the projected visual rows (a Gram matrix,
so L is positive semi-definite), r each token's relevance to the instruction, min-max normalised to (0, 1].
A subset's probability grows with det(L_subset): with the similarity of its members it shrinks (near-duplicates
cost), with their relevance it grows. The subset of `n_keep` tokens is found by the fast greedy MAP inference of
Chen et al. (2018), which grows the subset one token at a time by the largest gain in log det, updating a
Cholesky factor incrementally (O(n * n_keep) per step).

Relevance: the paper compares CLIP's patch embeddings with CLIP's text embedding of the instruction. A
llama.cpp mmproj carries no text tower, so here the relevance is the mean cosine between each projected visual
row and the language model's input embeddings of the question's tokens - the space the projector maps into
(for the default model, trained to regress each patch onto the words that describe it). Without a question
the relevance is uniform and the rule reduces to plain DPP diversity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.errors import InputError
from atp_cli.pruning.base import ModuleInput

EPS = 1e-10


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def relevance(rows: np.ndarray, query: np.ndarray | None) -> np.ndarray:
    """(n,) relevance of each visual row to the question's token embeddings, min-max normalised to (0, 1]
    (the paper's normalisation); all ones without a question."""
    if query is None or len(query) == 0:
        return np.ones(len(rows))
    r = (unit_rows(rows) @ unit_rows(query).T).mean(1)
    return (r - r.min() + 1e-6) / max(r.max() - r.min(), EPS)


def dpp_greedy_map(kernel: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the k items greedy MAP inference of the DPP with `kernel` picks (Chen et al.,
    2018): each step takes the item of the largest remaining conditional variance d_j^2 = L_jj - |c_j|^2.
    When the kernel's rank is exhausted (every d_j^2 ~ 0) the rest are taken by their own L_jj."""
    n = kernel.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"DPP selection of {k} items out of {n}")
    factors = np.zeros((k, n))
    gain = np.diag(kernel).astype(np.float64).copy()
    chosen: list[int] = []
    for i in range(k):
        j = int(np.argmax(gain))
        if gain[j] <= EPS:
            rest = np.setdiff1d(np.arange(n), chosen)
            chosen += list(rest[np.argsort(-np.diag(kernel)[rest], kind="stable")[: k - i]])
            break
        chosen.append(j)
        e = (kernel[j] - factors[:i, j] @ factors[:i]) / np.sqrt(gain[j])
        factors[i] = e
        gain -= e * e
        gain[chosen] = -np.inf
    return np.sort(np.asarray(chosen, dtype=np.int64))


@dataclass(frozen=True)
class CDPruner:
    """Keep `n_keep` of the visual rows before the LLM (paper at 64 of 576: 97.0 % of LLaVA-1.5-7B's accuracy).
    `theta` in (0, 1) sharpens the relevance as the paper's optional exp(theta / (2 (1 - theta)) r); None: plain."""

    n_keep: int = 64
    theta: float | None = None
    name: str = "cdpruner"

    def __post_init__(self) -> None:
        if self.n_keep < 1:
            raise InputError(f"cdpruner keeps at least one token, got {self.n_keep}")
        if self.theta is not None and not 0.0 < self.theta < 1.0:
            raise InputError(f"cdpruner theta must be in (0, 1), got {self.theta}")

    def boundaries(self, n_layer: int) -> list[int]:
        return []

    def __call__(self, view: ModuleInput) -> np.ndarray:  # no in-LLM module
        return view.visual_pos

    def kernel(self, rows: np.ndarray, query: np.ndarray | None) -> np.ndarray:
        r = relevance(rows, query)
        if self.theta is not None:
            r = np.exp(self.theta / (2 * (1 - self.theta)) * r)
        u = unit_rows(rows)
        return r[:, None] * (u @ u.T) * r[None, :]

    def select(self, rows: np.ndarray, query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.n_keep > len(rows):
            raise InputError(f"cdpruner cannot keep {self.n_keep} of {len(rows)} visual tokens")
        idx = dpp_greedy_map(self.kernel(rows, query), self.n_keep)
        return np.asarray(rows, np.float32)[idx], idx
