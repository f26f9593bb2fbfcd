"""The ATP scores, features and threshold MLP in torch, mirroring `atp_cli.pruning` (numpy) exactly.

Tests check the two against each other; the torch side exists so that thresholds can be trained.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from atp_cli.pruning.atp import ThresholdMLP
from atp_cli.pruning.config import N_FEATURES, AtpConfig
from atp_cli.pruning.sap import grid_shape, raster_coords, spatial_scores
from atp_cli.pruning.scores import relevance_debiased

_QUANTILES = torch.tensor([0.25, 0.5, 0.75, 0.9], dtype=torch.float64)


def mean_one(s: torch.Tensor) -> torch.Tensor:
    m = s.mean()
    return s / m if m > 0 else torch.ones_like(s)


def relevance(attn_vv: torch.Tensor, attn_tv: torch.Tensor) -> torch.Tensor:
    """(nv,) s_r from (nv, nv) and (nq, nv) head-mean attention (see atp_cli.pruning.scores)."""
    nv = attn_vv.shape[0]
    seen_by = torch.arange(nv, 0, -1, dtype=attn_vv.dtype, device=attn_vv.device)
    s_self = mean_one(torch.tril(attn_vv).sum(0) / seen_by)
    if attn_tv.shape[0] == 0:
        return s_self
    return (s_self + mean_one(attn_tv.mean(0))) / 2


def module_relevance(config: AtpConfig, attn_vv: torch.Tensor, attn_tv: torch.Tensor, query_pos: torch.Tensor,
                     visual_pos: torch.Tensor) -> torch.Tensor:
    """(nv,) s_r as the module of `config` computes it: plain, or distance-debiased (config.debias).

    The debiased scores come from inference's own numpy code: scores are read from detached attention (no gradient
    flows through them, only through the thresholds), so one implementation serves both and cannot drift."""
    if not config.debias:
        return relevance(attn_vv, attn_tv)
    as_np = lambda x: x.detach().cpu().numpy()  # noqa: E731
    s_r = relevance_debiased(as_np(attn_vv), as_np(attn_tv), as_np(query_pos), as_np(visual_pos))
    return torch.from_numpy(s_r).to(dtype=attn_vv.dtype, device=attn_vv.device)


def spatial(config: AtpConfig, n_visual: int) -> torch.Tensor:
    """(nv,) s_sp of every raster position (float64)."""
    rows, cols = raster_coords(np.arange(n_visual), grid_shape(n_visual, config.grid))
    return torch.from_numpy(spatial_scores(rows, cols, config.strides, config.lam))


def features(s_r: torch.Tensor, s_sp: torch.Tensor, alive_fraction: torch.Tensor) -> torch.Tensor:
    """(N_FEATURES,) as atp_cli.pruning.atp.pooled_features."""
    q = torch.quantile(s_r, _QUANTILES.to(s_r.dtype))
    return torch.stack([s_r.mean(), s_r.std(unbiased=False), s_r.max(), *q, s_sp.mean(),
                        (s_sp > 0).to(s_r.dtype).mean(), alive_fraction.to(s_r.dtype)])


class ThresholdNet(nn.Module):
    """fc1 -> ReLU -> fc2 -> (softplus, sigmoid), as ThresholdMLP."""

    def __init__(self, hidden: int, start: tuple[float, float] | None = None) -> None:
        """`start`: the (theta_r, theta_sp) to begin at for every image (e.g. a calibrated fixed rule); None: near
        "keep everything" (low relevance threshold, spatial threshold ~ 1)."""
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, hidden, dtype=torch.float64)
        self.fc2 = nn.Linear(hidden, 2, dtype=torch.float64)
        with torch.no_grad():
            self.fc2.weight.mul_(0.01)
            if start is None:
                self.fc2.bias.copy_(torch.tensor([-3.0, 3.0], dtype=torch.float64))
            else:  # fc2's bias sets the thresholds; the per-image part starts at exactly zero
                self.fc2.weight.zero_()
                self.fc2.bias.copy_(torch.from_numpy(ThresholdMLP.constant(*start).fc2_b).double())

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.fc2(torch.relu(self.fc1(f)))
        return nn.functional.softplus(z[0]), torch.sigmoid(z[1])

    def export(self) -> ThresholdMLP:
        t = lambda p: p.detach().cpu().numpy().astype(np.float32)  # noqa: E731
        return ThresholdMLP(t(self.fc1.weight), t(self.fc1.bias), t(self.fc2.weight), t(self.fc2.bias))
