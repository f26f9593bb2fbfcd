"""Strategies by name, for the CLI and the Pipeline. Parameters follow each method's paper by default."""

from __future__ import annotations

from typing import Any

from atp_cli.errors import InputError
from atp_cli.pruning.atp import AtpFreeStrategy, AtpStrategy
from atp_cli.pruning.baselines import FastV, NoPruning, PyramidDrop, RandomKeep, UniformGrid
from atp_cli.pruning.cdpruner import CDPruner
from atp_cli.pruning.dart import Dart
from atp_cli.pruning.hybrid import Hybrid
from atp_cli.pruning.config import AtpConfig, default_boundaries
from atp_cli.pruning.store import AtpWeights
from atp_cli.pruning.visionzip import VisionZipStyle

NAMES = ("atp", "atp-free", "hybrid", "cdpruner", "dart", "fastv", "pdrop", "visionzip-style", "uniform", "random",
         "none")
DEFAULT_FREE_MASS = 0.6
DEFAULT_FREE_STRIDES = (4, 6, 8)

DOCS = {
    "atp": "trained thresholds (the mmproj's atp.* MLPs); budget=B: its operating point for B (pre-LLM rows + MLPs)",
    "atp-free": "relevance mass p_m + SAP grid of stride k_m per module (calibrated levels from the mmproj)",
    "fastv": "after layer k (2), keep ratio R (0.25) of visual tokens by the last prompt token's attention",
    "pdrop": "at 1/4, 2/4, 3/4 depth keep ratio (0.5) of the alive tokens by the last instruction token",
    "visionzip-style": "before the LLM: n_dominant (54) + n_context (10) merged tokens",
    "cdpruner": "before the LLM: keep (64 of 576) tokens by the question-conditioned DPP (relevance x diversity)",
    "dart": "after layer k (2), keep ratio (0.25): tokens least similar to 4 visual + 4 question pivots",
    "hybrid": "cdpruner keeps (half of the) tokens before the LLM, then the atp modules (atp-free without weights)",
    "uniform": "after layer k (2), keep ratio (0.25) evenly spaced in raster order",
    "random": "after layer k (2), keep a seeded random ratio (0.25)",
    "none": "no pruning",
}


def make_strategy(name: str, n_layer: int, n_visual: int, weights: AtpWeights | None = None, **params: Any):
    """Build the strategy `name`; `params` override its defaults (k, ratio, seed, dominant, context, mass)."""
    ratio = float(params.get("ratio", 0.25))
    k = int(params.get("k", 2))
    if name == "atp":
        if weights is None or not weights.mlps:
            raise InputError("strategy 'atp' needs trained ATP weights in the mmproj (atp convert --atp)")
        modules = AtpStrategy(weights.config, list(weights.mlps), n_visual)
        if params.get("budget") is None:
            return modules
        keep = weights.operating_point(float(params["budget"]))  # a named operating point of the mmproj
        return modules if keep >= n_visual else Hybrid(CDPruner(keep), modules, name="atp")
    if name == "hybrid":
        inner_name = "atp" if weights is not None and weights.mlps else "atp-free"
        inner = make_strategy(inner_name, n_layer, n_visual, weights, **params)
        return Hybrid(CDPruner(int(params.get("keep", max(1, n_visual // 2))), _theta(params)), inner)
    if name == "cdpruner":
        return CDPruner(int(params.get("keep", max(1, round(n_visual * 64 / 576)))), _theta(params))
    if name == "dart":
        return Dart(k=k, keep_ratio=ratio)
    if name == "atp-free":
        if weights is not None and weights.free_mass and "mass" not in params:
            return AtpFreeStrategy(weights.config, list(weights.free_mass), list(weights.free_stride), n_visual)
        config = weights.config if weights is not None else AtpConfig(n_layer, default_boundaries(n_layer))
        n = len(config.boundaries)
        strides = list(DEFAULT_FREE_STRIDES[:n]) + [0] * max(0, n - len(DEFAULT_FREE_STRIDES))
        return AtpFreeStrategy(config, [float(params.get("mass", DEFAULT_FREE_MASS))] * n, strides, n_visual)
    if name == "fastv":
        return FastV(k=k, keep_ratio=ratio)
    if name == "pdrop":
        stages = tuple(float(f) for f in params.get("stages", (0.25, 0.5, 0.75)))
        return PyramidDrop(keep_ratio=float(params.get("ratio", 0.5)), stages=stages)
    if name == "visionzip-style":
        return VisionZipStyle(int(params.get("dominant", 54)), int(params.get("context", 10)))
    if name == "uniform":
        return UniformGrid(k=k, keep_ratio=ratio)
    if name == "random":
        return RandomKeep(k=k, keep_ratio=ratio, seed=int(params.get("seed", 0)))
    if name == "none":
        return NoPruning()
    raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(NAMES)}")


def _theta(params: dict[str, Any]) -> float | None:
    return None if params.get("theta") is None else float(params["theta"])
