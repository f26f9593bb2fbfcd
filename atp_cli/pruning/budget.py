"""Parameters that make a fixed-rule strategy meet an average visual-token budget (the paper's metric).

The budget counts visual tokens averaged over all decoder layers. For rules whose count does not depend on the
image (FastV, uniform, random, DART, PyramidDrop, VisionZip-style, CDPruner) the parameters follow in closed form or by a
one-dimensional bisection. Rules that prune after layer k (2 by default, the papers' choice) move to an earlier
layer only when the budget is below what k unpruned layers cost (32 of 576 tokens over 30 layers: k = 1). ATP's
own counts (and the hybrid's, whose ATP modules follow its pre-LLM
selection) adapt per image and are set by training (`atp train`) or by
calibration (`atp calibrate`), not here.
"""

from __future__ import annotations

from atp_cli.errors import InputError
from atp_cli.pruning.baselines import PyramidDrop

SINGLE_BOUNDARY = ("fastv", "uniform", "random", "dart")
FIXED_RULES = (*SINGLE_BOUNDARY, "pdrop", "visionzip-style", "cdpruner")
DEFAULT_K = 2


def _pyramid_average(ratio: float, bounds: list[int], n_layer: int) -> float:
    """Fraction of visual token-layers PyramidDrop keeps with stage ratio `ratio`."""
    edges = [0, *bounds, n_layer]
    return sum((e - b) * ratio**i for i, (b, e) in enumerate(zip(edges[:-1], edges[1:]))) / n_layer


def _pyramid_params(frac: float, n_layer: int, k: int) -> dict:
    """The paper's stages (1/4, 2/4, 3/4 of the depth) when they can meet the budget; below that (they always
    keep a quarter of the token-layers), three stages evenly spread from layer k on, as FastV starts."""
    early = (k / n_layer, (k + (n_layer - k) / 3) / n_layer, (k + 2 * (n_layer - k) / 3) / n_layer)
    for stages in ((0.25, 0.5, 0.75), early):
        bounds = PyramidDrop(stages=stages).boundaries(n_layer)
        lo, hi = 1e-6, 1.0
        if frac <= _pyramid_average(lo, bounds, n_layer):
            continue
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _pyramid_average(mid, bounds, n_layer) < frac else (lo, mid)
        return {"ratio": (lo + hi) / 2, "stages": stages}
    raise InputError(f"pdrop: a budget of {frac:.0%} of the visual tokens is below what its first stage costs")


def params_for_budget(name: str, budget: float, n_layer: int, n_visual: int, k: int = DEFAULT_K) -> dict:
    """Strategy parameters (for registry.make_strategy) whose average visual-token count is `budget`."""
    if name not in FIXED_RULES:
        raise InputError(f"{name!r} has no closed-form budget; choose one of {', '.join(FIXED_RULES)}")
    if not 0 < budget <= n_visual:
        raise InputError(f"budget must be in (0, {n_visual}] visual tokens, got {budget}")
    frac = budget / n_visual
    if name in SINGLE_BOUNDARY:
        for layer in range(k, 0, -1):  # the paper's layer; an earlier one only where the budget is below its cost
            ratio = (frac * n_layer - layer) / (n_layer - layer)
            if ratio > 0:
                return {"k": layer, "ratio": min(ratio, 1.0)}
        raise InputError(f"{name}: a budget of {budget:.0f} is below what the first unpruned layer costs")
    if name == "pdrop":
        for layer in range(k, 0, -1):
            try:
                return _pyramid_params(frac, n_layer, layer)
            except InputError:
                if layer == 1:
                    raise
        raise AssertionError("unreachable")
    if name == "cdpruner":  # every layer sees the kept rows
        return {"keep": max(1, round(budget))}
    dominant = max(1, round(budget * 54 / 64))  # VisionZip's 54 dominant : 10 contextual split
    return {"dominant": dominant, "context": max(0, round(budget) - dominant)}
