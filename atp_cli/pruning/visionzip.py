"""VisionZip-style pre-LLM reduction (Yang et al., 2024): dominant tokens plus merged context tokens.

VisionZip ranks visual tokens by the attention the vision tower's CLS pays them. llama.cpp's mtmd does not
expose the tower's attention, so the CLS is approximated by the mean visual embedding: dominant tokens are those
the mean embedding attends to most (softmax of scaled dot products). The remaining tokens are merged into
`n_context` contextual tokens: evenly spaced anchors, each absorbing the remaining tokens most similar to it
(cosine), averaged. Every output row keeps the raster position of its (anchor) token, so RoPE still sees where
it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.errors import InputError


@dataclass(frozen=True)
class VisionZipStyle:
    """Keep `n_dominant` + `n_context` of the visual rows before the LLM (paper's 576 -> 64: 54 + 10)."""

    n_dominant: int = 54
    n_context: int = 10
    name: str = "visionzip-style"

    def boundaries(self, n_layer: int) -> list[int]:
        return []

    def __call__(self, view):  # no in-LLM module
        return view.visual_pos

    def select(self, rows: np.ndarray, query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(reduced rows (k, d), their raster indices ascending) from (n, d) projected visual rows (the question
        is not used: VisionZip's selection does not depend on it)."""
        n = rows.shape[0]
        if self.n_dominant < 1 or self.n_context < 0 or self.n_dominant + self.n_context > n:
            raise InputError(f"visionzip-style needs 1 <= dominant and dominant + context <= {n}, "
                             f"got {self.n_dominant} + {self.n_context}")
        x = rows.astype(np.float64)
        logits = x @ x.mean(0) / np.sqrt(x.shape[1])
        dominant = np.argsort(-logits, kind="stable")[: self.n_dominant]
        rest = np.setdiff1d(np.arange(n), dominant)
        out_idx, out_rows = list(dominant), [x[dominant]]
        if self.n_context and rest.size:
            anchors = rest[np.linspace(0, rest.size - 1, min(self.n_context, rest.size)).round().astype(int)]
            unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            owner = np.argmax(unit[rest] @ unit[anchors].T, axis=1)  # (len(rest),) anchor of each token
            merged = np.stack([x[rest[owner == a]].mean(0) for a in range(len(anchors))])
            out_idx += list(anchors)
            out_rows.append(merged)
        idx = np.asarray(out_idx)
        allrows = np.concatenate(out_rows, axis=0)
        order = np.argsort(idx)
        return allrows[order].astype(np.float32), idx[order]
