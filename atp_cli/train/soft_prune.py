"""Soft ATP masks during training: nothing is dropped, later layers see keys scaled by the mask.

At module m (boundary b_m) the threshold net reads the attention of layer b_m - 1 and gives
M_m(j) = max(sigmoid(tau (s_r(j) - theta_r)), sigmoid(tau (s_sp(j) - theta_sp))); masks multiply across modules,
and every layer >= b_m adds log M(j) to the attention scores of visual key j (a query always keeps itself).
The soft count of visual tokens averaged over all layers feeds the budget loss.
"""

from __future__ import annotations

import torch
from torch import nn

from atp_cli.pruning.config import AtpConfig
from atp_cli.train.attention import LayerControl
from atp_cli.train.scoring import ThresholdNet, features, relevance, spatial

_EPS = 1e-6


class SoftPruning(LayerControl):
    def __init__(self, config: AtpConfig, nets: nn.ModuleList, visual: torch.Tensor, query: torch.Tensor,
                 seq_len: int) -> None:
        super().__init__({b - 1 for b in config.boundaries})
        self.config, self.nets = config, nets
        self.visual, self.query, self.seq_len = visual, query, seq_len
        self.s_sp = spatial(config, len(visual)).to(visual.device)
        self.mask = torch.ones(len(visual), dtype=torch.float64, device=visual.device)  # cumulative
        self.masks: list[torch.Tensor] = []  # cumulative mask after each module
        self.thresholds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_layer(self, il: int) -> None:
        if il not in self.config.boundaries:
            return
        m = self.config.boundaries.index(il)
        probs = self.records[il - 1][0].detach().double()  # (T, T)
        v, q = self.visual, self.query
        s_r = relevance(probs[v][:, v], probs[q][:, v])
        theta_r, theta_sp = self.nets[m](features(s_r, self.s_sp, self.mask.mean()))
        tau = self.config.temperature
        keep = torch.maximum(torch.sigmoid(tau * (s_r - theta_r)), torch.sigmoid(tau * (self.s_sp - theta_sp)))
        self.mask = self.mask * keep
        self.masks.append(self.mask)
        self.thresholds.append((theta_r, theta_sp))

    def key_bias(self, il: int) -> torch.Tensor | None:
        if not self.masks:
            return None
        bias = torch.zeros(1, self.seq_len, dtype=torch.float32, device=self.mask.device)
        bias[0, self.visual] = torch.log(self.mask + _EPS).to(torch.float32)
        return bias

    def average_tokens(self, n_layer: int) -> torch.Tensor:
        """Soft visual tokens averaged over all decoder layers (the paper's metric)."""
        edges = [0, *self.config.boundaries, n_layer]
        counts = [torch.tensor(float(len(self.visual)), dtype=torch.float64, device=self.mask.device)]
        counts += [m.sum() for m in self.masks]
        return sum((e - b) * c for b, e, c in zip(edges[:-1], edges[1:], counts)) / n_layer


def make_nets(config: AtpConfig) -> nn.ModuleList:
    return nn.ModuleList(ThresholdNet(config.hidden) for _ in config.boundaries)
