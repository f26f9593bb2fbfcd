"""An independent numpy forward of a llama decoder, with per-layer token masks.

It reads the same float32 weights the GGUF was written from and implements the llama architecture as
llama.cpp's graph does (RMSNorm, "normal" RoPE on adjacent pairs, grouped-query attention, SwiGLU),
so the segment runtime can be checked against something that shares none of its code.
"""

from __future__ import annotations

import numpy as np

from converters.random_llama import LlamaShape


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """x: (n, heads, d); rotates pairs (2i, 2i+1) by pos * base^(-2i/d)."""
    d = x.shape[-1]
    theta = pos[:, None].astype(np.float64) * base ** (-np.arange(0, d, 2) / d)  # (n, d/2)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def attention(q, k, v, qpos, kpos):
    """q: (nq, H, d), k/v: (nk, Hkv, d); causal by position. Returns (out (nq, H*d), probs (H, nq, nk))."""
    n_head, n_kv = q.shape[1], k.shape[1]
    rep = n_head // n_kv
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(kpos[None, None, :] <= qpos[None, :, None], scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", p, v)
    return out.reshape(out.shape[0], -1), p


def forward(
    w: dict[str, np.ndarray],
    shape: LlamaShape,
    inputs: np.ndarray,
    pos: np.ndarray,
    present: np.ndarray | None = None,
):
    """inputs: (n, n_embd) entry embeddings; present: (n_layer, n) bool, token i exists in layer l.

    Returns (logits of the last entry, per-layer head-mean attention matrices over present tokens).
    """
    n = len(pos)
    present = np.ones((shape.n_layer, n), bool) if present is None else present
    x = inputs.astype(np.float64)
    attn_means = []
    for il in range(shape.n_layer):
        idx = np.flatnonzero(present[il])
        h = x[idx]
        a = rms_norm(h, w[f"blk.{il}.attn_norm.weight"], shape.rms_eps)
        q = (a @ w[f"blk.{il}.attn_q.weight"].T).reshape(len(idx), shape.n_head, shape.head_dim)
        k = (a @ w[f"blk.{il}.attn_k.weight"].T).reshape(len(idx), shape.n_head_kv, shape.head_dim)
        v = (a @ w[f"blk.{il}.attn_v.weight"].T).reshape(len(idx), shape.n_head_kv, shape.head_dim)
        q, k = rope(q, pos[idx], shape.rope_freq_base), rope(k, pos[idx], shape.rope_freq_base)
        o, p = attention(q, k, v, pos[idx], pos[idx])
        attn_means.append(p.mean(0))
        h = h + o @ w[f"blk.{il}.attn_output.weight"].T
        f = rms_norm(h, w[f"blk.{il}.ffn_norm.weight"], shape.rms_eps)
        g = f @ w[f"blk.{il}.ffn_gate.weight"].T
        u = f @ w[f"blk.{il}.ffn_up.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * u) @ w[f"blk.{il}.ffn_down.weight"].T
        x[idx] = h
    last = rms_norm(x[-1], w["output_norm.weight"], shape.rms_eps)
    return last @ w["output.weight"].T, attn_means
