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
