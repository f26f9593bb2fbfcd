"""Importance scores of alive visual tokens from one layer's head-mean attention (ATP_METHOD.md §2).

All functions are pure numpy over the arrays a module receives (`ModuleInput`): rows and columns are the
alive visual tokens in ascending position order, and the query rows are the text tokens after the image.
"""

from __future__ import annotations

import numpy as np

from atp_cli.errors import InputError


def check_attention(attn: np.ndarray, name: str) -> None:
    if not np.isfinite(attn).all():
        raise InputError(f"{name} attention holds NaN or inf")


def self_modality(attn_vv: np.ndarray) -> np.ndarray:
    """s_self(j): mean attention that visual queries i >= j pay to j.

    Causal masking lets only nv - j of the alive visual queries see token j; dividing by that count (and not
    by nv) removes the bias towards early tokens.
    """
    nv = attn_vv.shape[0]
    seen_by = np.arange(nv, 0, -1, dtype=np.float64)  # (nv,) queries at or after column j
    return np.tril(attn_vv).sum(axis=0) / seen_by


def cross_modality(attn_tv: np.ndarray) -> np.ndarray:
    """s_cross(j): mean attention that the query (text) tokens pay to visual token j."""
    return attn_tv.mean(axis=0)


def mean_one(s: np.ndarray) -> np.ndarray:
    """Scale to mean 1 over the alive tokens, so that uniform attention scores 1 everywhere."""
    m = float(s.mean()) if s.size else 0.0
    return s / m if m > 0 else np.ones_like(s)


def relevance(attn_vv: np.ndarray, attn_tv: np.ndarray) -> np.ndarray:
    """s_r = (normalised s_self + normalised s_cross) / 2; s_self alone when there is no query text."""
    check_attention(attn_vv, "vision->vision")
    check_attention(attn_tv, "text->vision")
    s_self = mean_one(self_modality(attn_vv))
    if attn_tv.shape[0] == 0:
        return s_self
    return (s_self + mean_one(cross_modality(attn_tv))) / 2.0


# --- distance-debiased scores --------------------------------------------------------------------------------------
# A causal language model pays more attention to keys near the query (RoPE's decay, recency), so raw attention ranks
# the image rows next to the question highest whatever they show. These scores divide each attention weight by what
# a key at that distance gets on average - a smooth trend fitted on the same matrix - and keep what is left: how
# much more than its distance explains a token is looked at.

TREND_DEGREE = 3


def _distance_trend(distance: np.ndarray, attn: np.ndarray) -> np.ndarray:
    """exp of a degree-3 polynomial in log(1 + distance) fitted to log attention (least squares): the attention a key
    gets for its distance alone, evaluated at every entry."""
    x = np.log1p(distance.astype(np.float64)).ravel()
    y = np.log(np.maximum(attn.astype(np.float64), 1e-12)).ravel()
    if x.size <= TREND_DEGREE + 1 or np.ptp(x) == 0:
        return np.full(distance.shape, np.exp(y.mean()) if y.size else 1.0)
    coeffs = np.polynomial.polynomial.polyfit(x, y, TREND_DEGREE)
    return np.exp(np.polynomial.polynomial.polyval(x, coeffs)).reshape(distance.shape)


def self_modality_debiased(attn_vv: np.ndarray) -> np.ndarray:
    """s_self without the distance trend: the mean over visual queries i >= j of a_ij / trend(i - j)."""
    nv = attn_vv.shape[0]
    i, j = np.tril_indices(nv)
    ratio = np.zeros((nv, nv))
    ratio[i, j] = attn_vv[i, j] / _distance_trend(i - j, attn_vv[i, j])
    return ratio.sum(axis=0) / np.arange(nv, 0, -1, dtype=np.float64)


def cross_modality_debiased(attn_tv: np.ndarray, query_pos: np.ndarray, visual_pos: np.ndarray) -> np.ndarray:
    """s_cross without the distance trend: each query row scaled to mean 1 (rows spend different shares on the
    image), divided by the trend of its positional distance to the key, averaged over the queries."""
    rows = attn_tv / np.maximum(attn_tv.mean(axis=1, keepdims=True), 1e-12)
    distance = np.asarray(query_pos)[:, None] - np.asarray(visual_pos)[None, :]
    return (rows / _distance_trend(distance, rows)).mean(axis=0)


def relevance_debiased(attn_vv: np.ndarray, attn_tv: np.ndarray, query_pos: np.ndarray,
                       visual_pos: np.ndarray) -> np.ndarray:
    """`relevance` from the distance-debiased self and cross scores."""
    check_attention(attn_vv, "vision->vision")
    check_attention(attn_tv, "text->vision")
    s_self = mean_one(self_modality_debiased(attn_vv))
    if attn_tv.shape[0] == 0:
        return s_self
    return (s_self + mean_one(cross_modality_debiased(attn_tv, query_pos, visual_pos))) / 2.0
