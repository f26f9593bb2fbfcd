"""Fidelity to the unpruned model, which needs no right answer: the first answer token's distribution (KL divergence
and top-1 agreement against the unpruned model's) and the greedy answer (equal or not), per question, with paired
bootstrap intervals over the questions - of each row's mean and of the difference between two rows.

Both rows of a comparison answered the same questions, so an interval resamples questions and keeps each question's
pair of values together: only the questions on which the rows differ widen it. That is what decides whether one
strategy beats another by more than the noise of which questions were asked.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95
RESAMPLES = 2000


def kl_divergence(reference: np.ndarray, other: np.ndarray) -> float:
    """KL(P_reference || P_other) in nats, from two log-probability vectors over the same vocabulary."""
    p = np.exp(np.asarray(reference, np.float64))
    return float(np.sum(p * (np.asarray(reference, np.float64) - np.asarray(other, np.float64))))


def top1_equal(reference: np.ndarray, other: np.ndarray) -> bool:
    return int(np.argmax(reference)) == int(np.argmax(other))


def mean_interval(values: Sequence[float], seed: int = 0) -> tuple[float, tuple[float, float] | None]:
    """Mean and its bootstrap 95 % interval (percentile); the interval is None when every resample agrees."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return float("nan"), None
    if np.all(x == x[0]):
        return float(x[0]), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((x,), np.mean, vectorized=True, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                        method="percentile", rng=np.random.default_rng(seed))
    return float(x.mean()), (float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_difference(ours: Sequence[float], theirs: Sequence[float], seed: int = 0
                      ) -> tuple[float, tuple[float, float] | None]:
    """mean(ours - theirs) over the same questions, with its paired bootstrap 95 % interval: when the interval
    excludes 0 the two rows differ by more than the choice of questions explains."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired rows need the same questions: {a.shape} vs {b.shape}")
    return mean_interval(a - b, seed)
