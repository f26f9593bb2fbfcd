"""The interface between the driver and every strategy: what a module sees (ModuleInput), what it returns (a keep
set, checked by check_keep), and the Strategy protocol. Pure numpy, so strategies import without the native
library."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from atp_cli.errors import InputError


@dataclass(frozen=True)
class ModuleInput:
    """What a pruning module sees at a segment boundary (all arrays over *alive* tokens only)."""

    boundary: int  # first layer that will not see the dropped tokens
    layer: int  # the layer whose attention is given: boundary - 1
    visual_pos: np.ndarray  # (nv,) positions of the alive visual tokens, ascending
    query_pos: np.ndarray  # (nq,) positions of the text tokens after the image
    attn_vv: np.ndarray  # (nv, nv) head-mean attention, visual queries -> visual keys
    attn_tv: np.ndarray  # (nq, nv) head-mean attention, query text -> visual keys
    visual_origin: int  # position of raster index 0: raster index = visual_pos - visual_origin
    n_layer: int
    # hidden states entering the boundary layer (the residual stream), alive visual rows and query rows; for rules
    # that compare tokens by content (DART), None where the caller has none
    hidden_v: np.ndarray | None = None  # (nv, d)
    hidden_q: np.ndarray | None = None  # (nq, d)


KeepFn = Callable[[ModuleInput], np.ndarray]


def check_keep(kept: np.ndarray, alive: np.ndarray, boundary: int) -> np.ndarray:
    """Validate a keep set: non-empty, strictly ascending, a subset of the alive visual positions."""
    kept = np.asarray(kept)
    if kept.ndim != 1 or kept.size == 0:
        raise InputError(f"keep set at layer {boundary} is empty or not 1-D")
    if not np.issubdtype(kept.dtype, np.integer):
        raise InputError(f"keep set at layer {boundary} must hold integer positions, got {kept.dtype}")
    if (np.diff(kept) <= 0).any():
        raise InputError(f"keep set at layer {boundary} is not strictly ascending")
    if not np.isin(kept, alive).all():
        raise InputError(f"keep set at layer {boundary} holds positions that are not alive visual tokens")
    return kept.astype(np.int32)



class PreLlmSelection(Protocol):
    """A strategy that chooses visual rows before the language model (VisionZip-style, CDPruner, the hybrid):
    the Pipeline replaces the image span by what `select` returns, at the rows' original positions."""

    name: str

    def select(self, rows: np.ndarray, query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(kept or merged rows (k, d), their raster indices ascending) from the (n, d) projected visual rows;
        `query` (m, d): the language model's input embeddings of the question's tokens, for rules that condition
        on the instruction."""
        ...


def is_pre_llm(strategy: object) -> bool:
    return callable(getattr(strategy, "select", None))


class Strategy(Protocol):
    """Where to prune (boundaries for a given depth) and what to keep there."""

    name: str

    def boundaries(self, n_layer: int) -> list[int]:
        """Layers at which a module runs (first layer that no longer sees the dropped tokens)."""
        ...

    def __call__(self, view: ModuleInput) -> np.ndarray:
        """Kept visual positions: a non-empty ascending subset of view.visual_pos."""
        ...
