"""ATP masks during training: nothing is dropped, later layers see keys scaled by the mask.

At module m (boundary b_m) the threshold net reads the attention of layer b_m - 1 and gives
M_m(j) = max(sigmoid(tau (s_r(j) - theta_r)), sigmoid(tau (s_sp(j) - theta_sp))); masks multiply across modules,
and every layer >= b_m adds log M(j) to the attention scores of visual key j (a query always keeps itself).
The count of visual tokens averaged over all layers feeds the budget loss.

With `straight_through` the forward pass uses inference's hard decision (1 where s_r > theta_r or s_sp > theta_sp,
else 0) and the gradient is the soft mask's. A soft mask alone lets a token at M = 0.1 still be read; the SAP branch
is especially soft, since its scores sit within 0.05-0.4 of each other, so at tau = 10 a grid the hard rule drops
keeps a third of its weight in training: training reads tokens that inference drops.
Through log(M + eps) a hard-dropped key still gets the gradient of a multiplicative mask (exp(score) / Z times the
value's effect), so the loss can ask for a dropped token back.
"""

from __future__ import annotations

import torch
from torch import nn

from atp_cli.pruning.config import AtpConfig
from atp_cli.train.attention import LayerControl
from atp_cli.train.scoring import ThresholdNet, features, module_relevance, spatial

_EPS = 1e-6


class SoftPruning(LayerControl):
    def __init__(self, config: AtpConfig, nets: nn.ModuleList, visual: torch.Tensor, query: torch.Tensor,
                 seq_len: int, straight_through: bool = False) -> None:
        super().__init__({b - 1 for b in config.boundaries})
        self.config, self.nets = config, nets
        self.visual, self.query, self.seq_len = visual, query, seq_len
        self.straight_through = straight_through
        self.s_sp = spatial(config, len(visual)).to(visual.device)
        self.mask = torch.ones(len(visual), dtype=torch.float64, device=visual.device)  # cumulative
        self.masks: list[torch.Tensor] = []  # cumulative mask after each module
        self.thresholds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_layer(self, il: int) -> None:
        if il not in self.config.boundaries:
            return
        m = self.config.boundaries.index(il)
        probs = self.records[il - 1][0].detach().double()  # (T, T)
        alive = self.alive()
        v, q, s_sp = self.visual[alive], self.query, self.s_sp[alive]
        s_r = module_relevance(self.config, probs[v][:, v], probs[q][:, v], q, v)
        theta_r, theta_sp = self.nets[m](features(s_r, s_sp, self.mask.mean()))
        tau = self.config.temperature
        keep = torch.maximum(torch.sigmoid(tau * (s_r - theta_r)), torch.sigmoid(tau * (s_sp - theta_sp)))
        if self.straight_through:
            hard = ((s_r > theta_r) | (s_sp > theta_sp)).to(keep.dtype)
            if not hard.any():  # as inference: the highest-scoring token survives
                hard[torch.argmax(s_r)] = 1.0
            keep = hard + (keep - keep.detach())  # exactly 0 or 1 forward
        # tokens dropped earlier stay at 0 through the product, and keep the gradient of the module that dropped them
        self.mask = self.mask * torch.ones_like(self.mask).index_copy(0, alive.nonzero().squeeze(1), keep)
        self.masks.append(self.mask)
        self.thresholds.append((theta_r, theta_sp))

    def alive(self) -> torch.Tensor:
        """(nv,) bool: the visual tokens a module scores. With hard forward masks, those no module dropped, so the
        scores, their normalisation and the pooled features are inference's (which sees only alive tokens); with soft
        masks, all of them."""
        if self.straight_through:
            return self.mask.detach() > 0.5
        return torch.ones_like(self.mask, dtype=torch.bool)

    def key_bias(self, il: int) -> torch.Tensor | None:
        if not self.masks:
            return None
        bias = torch.zeros(1, self.seq_len, dtype=torch.float32, device=self.mask.device)
        bias[0, self.visual] = torch.log(self.mask + _EPS).to(torch.float32)
        return bias

    def average_tokens(self, n_layer: int) -> torch.Tensor:
        """Visual tokens averaged over all decoder layers (the paper's metric): soft, or hard with soft gradient."""
        edges = [0, *self.config.boundaries, n_layer]
        counts = [torch.tensor(float(len(self.visual)), dtype=torch.float64, device=self.mask.device)]
        counts += [m.sum() for m in self.masks]
        return sum((e - b) * c for b, e, c in zip(edges[:-1], edges[1:], counts)) / n_layer


def make_nets(config: AtpConfig, start: tuple[float, float] | None = None) -> nn.ModuleList:
    """One threshold net per module, all beginning at the thresholds `start` (None: near keeping everything)."""
    return nn.ModuleList(ThresholdNet(config.hidden, start) for _ in config.boundaries)
