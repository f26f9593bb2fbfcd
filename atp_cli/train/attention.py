"""Layer-wise attention control for a transformers Llama: read attention, bias keys per layer.

transformers runs every decoder layer's attention through a registered attention function; this one is the
eager computation plus two hooks, keyed by `module.layer_idx`:
- `before_layer(il)` lets a pruning module decide (from attention recorded earlier) before layer il runs;
- `key_bias(il)` returns a (B, T) additive bias on the keys of layer il: log of a soft mask while training,
  -inf on dropped tokens for hard pruning. A query always keeps itself (the diagonal is never biased).
Attention probabilities of the layers in `record_layers` are kept, head-averaged: (B, T, T).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

IMPLEMENTATION = "atp_layerwise"


class LayerControl:
    """Subclass hooks: `before_layer` and `key_bias`. The base class only records attention."""

    def __init__(self, record_layers: set[int]) -> None:
        self.record_layers = set(record_layers)
        self.records: dict[int, torch.Tensor] = {}

    def before_layer(self, il: int) -> None:
        """Called before layer il computes its attention."""

    def key_bias(self, il: int) -> torch.Tensor | None:
        return None


_active: list[LayerControl] = []


def _attention(module: nn.Module, query, key, value, attention_mask, scaling, dropout: float = 0.0, **kwargs):
    il = getattr(module, "layer_idx", None)  # None: a vision-tower layer, left uncontrolled
    control = _active[-1] if _active and il is not None else None
    if control is not None:
        control.before_layer(il)
    groups = getattr(module, "num_key_value_groups", 1)
    keys, values = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, keys.transpose(2, 3)) * scaling  # (B, H, T, T)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : keys.shape[-2]]
    bias = control.key_bias(il) if control is not None else None
    if bias is not None:
        t = scores.shape[-1]
        diag = torch.eye(t, dtype=torch.bool, device=scores.device)
        bias = bias.to(scores.device)
        scores = scores + torch.where(diag, torch.zeros((), dtype=bias.dtype, device=bias.device),
                                      bias[:, None, :])[:, None]
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if control is not None and il in control.record_layers:
        control.records[il] = probs.mean(dim=1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, values).transpose(1, 2).contiguous()
    return out, probs


AttentionInterface.register(IMPLEMENTATION, _attention)
AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)  # a full additive causal mask, as eager attention gets


@contextlib.contextmanager
def controlled(model: nn.Module, control: LayerControl) -> Iterator[LayerControl]:
    """Run `model` with `control` attached (eager attention with the hooks)."""
    model.set_attn_implementation(IMPLEMENTATION)
    _active.append(control)
    try:
        yield control
    finally:
        _active.pop()
