"""`atp calibrate`: training-free ATP levels that meet a target budget, with no gradient.

Every module keeps the smallest set of tokens holding a fraction p of the relevance mass, plus its SAP grid
(atp_cli.pruning.atp.AtpFreeStrategy). The visual tokens averaged over all layers grow with p, so a bisection
on p over a set of calibration prompts finds the level that meets the budget on average; the count still
adapts to each image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from atp_cli.driver import SegmentedDecoder
from atp_cli.errors import InputError
from atp_cli.prompt_input import Prompt
from atp_cli.pruning.atp import AtpFreeStrategy
from atp_cli.pruning.config import AtpConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    mass: tuple[float, ...]
    stride: tuple[int, ...]
    target: float
    achieved: float  # mean visual tokens averaged over all layers, on the calibration prompts


def average_tokens(dec: SegmentedDecoder, prompts: Sequence[Prompt], keep) -> list[float]:
    """Visual tokens averaged over all layers, per prompt (each prefilled in a fresh conversation)."""
    out = []
    for prompt in prompts:
        dec.reset()
        dec.prefill(prompt, keep)
        out.append(dec.stats.visual_tokens_avg)
    dec.reset()
    return out


def calibrate(dec: SegmentedDecoder, prompts: Sequence[Prompt], config: AtpConfig, strides: Sequence[int],
              target: float, iterations: int = 14,
              on_step: Callable[[float, float], None] | None = None) -> Calibration:
    """Bisect the common mass level p so that the mean token count over `prompts` meets `target`."""
    if not prompts:
        raise InputError("calibration needs at least one prompt")
    n_visual = int(prompts[0].visual_mask().sum())
    if not 0 < target <= n_visual:
        raise InputError(f"budget must be in (0, {n_visual}] visual tokens, got {target}")
    if list(dec.boundaries) != list(config.boundaries):
        raise InputError(f"decoder boundaries {dec.boundaries} differ from the ATP boundaries {config.boundaries}")

    def measure(p: float) -> float:
        strategy = AtpFreeStrategy(config, [p] * len(config.boundaries), list(strides), n_visual)
        value = float(np.mean(average_tokens(dec, prompts, strategy)))
        if on_step is not None:
            on_step(p, value)
        return value

    level, value = bisect_level(measure, target, 1e-4, 1.0, iterations)
    return Calibration((level,) * len(config.boundaries), tuple(strides), target, value)


def bisect_level(measure: Callable[[float], float], target: float, lo: float, hi: float,
                 iterations: int = 14) -> tuple[float, float]:
    """The level in [lo, hi] whose measured token count comes closest to `target`, for a count that grows with
    the level; (level, count). Below what `lo` keeps it warns and returns lo; above what `hi` keeps, hi."""
    low, high = measure(lo), measure(hi)
    if target <= low:
        log.warning("budget %.1f is below what the lowest level keeps (%.1f)", target, low)
        return lo, low
    if target >= high:
        return hi, high
    best = (hi, high)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        value = measure(mid)
        if abs(value - target) < abs(best[1] - target):
            best = (mid, value)
        lo, hi = (mid, hi) if value < target else (lo, mid)
    return best


def calibrate_pipeline(pipe, questions: Sequence[tuple], target: float, strides: Sequence[int],
                       on_step: Callable[[float, float], None] | None = None,
                       config: AtpConfig | None = None) -> tuple[AtpConfig, Calibration]:
    """Calibrate atp-free levels for a Pipeline on (image, question) pairs: with `config`'s boundaries, else the
    mmproj's ATP configuration when it has one, else the default boundaries; strides padded with 0 (no grid) to one
    per module. Leaves the Pipeline on atp-free with these boundaries."""
    from atp_cli.pruning.config import default_boundaries

    n_layer = pipe.model.n_layer
    if config is None:
        config = pipe.weights.config if pipe.weights else AtpConfig(n_layer, default_boundaries(n_layer))
    n = len(config.boundaries)
    strides = (tuple(strides) + (0,) * n)[:n]
    pipe.use_strategy(AtpFreeStrategy(config, [0.5] * n, list(strides), pipe.n_visual))  # segment layout
    prompts = [pipe.prompt(image, question)[0] for image, question in questions]
    return config, calibrate(pipe.decoder, prompts, config, strides, target, on_step=on_step)


def calibrate_hybrid(pipe, questions: Sequence[tuple], target: float, iterations: int = 8) -> tuple[int, float]:
    """The number of rows the hybrid's pre-LLM selection keeps so that, with its ATP modules after it, the visual
    tokens averaged over all layers meet `target` on (image, question) pairs; (rows kept, tokens reached).
    Leaves the Pipeline on the hybrid at that count."""
    def measure(keep: float) -> float:
        pipe.set_strategy("hybrid", keep=max(1, round(keep)))
        values = []
        for image, question in questions:
            prompt = pipe.prompt(image, question)[0]
            values += average_tokens(pipe.decoder, [prompt], pipe.strategy)
        return float(np.mean(values))

    keep, value = bisect_level(measure, target, 1.0, float(pipe.n_visual), iterations)
    pipe.set_strategy("hybrid", keep=max(1, round(keep)))
    return max(1, round(keep)), value


def calibrate_thresholds(pipe, questions: Sequence[tuple], target: float, config: AtpConfig, theta_sp: float = 0.8,
                         iterations: int = 12) -> tuple[float, float]:
    """The relevance threshold theta_r that, held fixed in every module of `config` (with `theta_sp`), meets
    `target` visual tokens averaged over all layers on (image, question) pairs; (theta_r, tokens reached). Leaves
    the Pipeline on that fixed-threshold ATP. A higher theta_r keeps fewer tokens, so the bisection runs on -theta_r."""
    from atp_cli.pruning.atp import AtpStrategy, ThresholdMLP

    def use(theta_r: float) -> None:
        mlps = [ThresholdMLP.constant(theta_r, theta_sp, config.hidden)] * len(config.boundaries)
        pipe.use_strategy(AtpStrategy(config, mlps, pipe.n_visual))

    prompts: list[Prompt] = []

    def measure(level: float) -> float:
        use(-level)
        if not prompts:
            prompts.extend(pipe.prompt(image, question)[0] for image, question in questions)
        return float(np.mean(average_tokens(pipe.decoder, prompts, pipe.strategy)))

    level, value = bisect_level(measure, target, -8.0, -0.02, iterations)
    use(-level)
    return -level, value


def budget_params(pipe, strategy: str, budget: float | None, calibration: Sequence[dict] = ()) -> dict:
    """The parameters that make `strategy` meet an average visual-token `budget` on this Pipeline's model (None:
    the strategy's own parameters). atp runs the mmproj's operating point for the budget, the fixed rules meet it
    by construction, and hybrid and atp-free are calibrated on `calibration` (question records: image_path,
    question)."""
    from atp_cli.pruning.budget import FIXED_RULES, params_for_budget
    from atp_cli.pruning.registry import DEFAULT_FREE_STRIDES

    if budget is None or strategy == "none":
        return {}
    if strategy == "atp":  # a named operating point of the mmproj (refused there when it has none)
        return {"budget": budget}
    if strategy in FIXED_RULES:
        return params_for_budget(strategy, budget, pipe.model.n_layer, pipe.n_visual)
    if strategy in ("hybrid", "atp-free") and not calibration:
        raise InputError(f"{strategy} at a chosen budget needs calibration questions (atp bench quality "
                         "--calibration); without a budget it runs at its own levels")
    questions = [(r["image_path"], r["question"]) for r in calibration]
    if strategy == "hybrid":
        return {"keep": calibrate_hybrid(pipe, questions, budget)[0]}
    if strategy == "atp-free":
        return {"mass": calibrate_pipeline(pipe, questions, budget, DEFAULT_FREE_STRIDES)[1].mass[0]}
    raise InputError(f"no budget rule for strategy {strategy!r}")
