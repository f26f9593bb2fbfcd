"""Hard-pruned inference in transformers: the reference the llama.cpp driver is checked against.

The same keep rule (the numpy strategy objects of `atp_cli.pruning`) decides at each boundary from the
head-mean attention of the layer before it; dropped tokens are then masked as keys in every later layer,
which is what removing them from those layers' KV caches does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from atp_cli.pruning.base import KeepFn, ModuleInput, check_keep
from atp_cli.errors import InputError
from atp_cli.train.attention import LayerControl, controlled


@dataclass
class HardPruning(LayerControl):
    keep: KeepFn
    boundaries: list[int]
    n_layer: int
    visual: np.ndarray  # (nv,) sequence positions of the image tokens
    query: np.ndarray  # (nq,) positions of the text after the image
    seq_len: int
    kept: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__({b - 1 for b in self.boundaries})
        self.alive = self.visual.copy()
        self.bias = torch.zeros(1, self.seq_len)

    def before_layer(self, il: int) -> None:
        if il not in self.boundaries:
            return
        probs = self.records[il - 1][0].double().cpu().numpy()  # (T, T)
        view = ModuleInput(
            boundary=il, layer=il - 1, visual_pos=self.alive.astype(np.int32), query_pos=self.query.astype(np.int32),
            attn_vv=probs[np.ix_(self.alive, self.alive)], attn_tv=probs[np.ix_(self.query, self.alive)],
            visual_origin=int(self.visual[0]), n_layer=self.n_layer,
        )
        kept = check_keep(self.keep(view), self.alive, il)
        self.bias[0, np.setdiff1d(self.alive, kept)] = float("-inf")
        self.alive = kept.astype(np.int64)
        self.kept.append(kept)

    def key_bias(self, il: int) -> torch.Tensor | None:
        return self.bias.to(torch.float32) if self.kept else None


def image_span(input_ids: torch.Tensor, image_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(visual positions, query positions) of a single-sequence prompt with one contiguous image span."""
    ids = input_ids[0].numpy()
    visual = np.flatnonzero(ids == image_token_id)
    if visual.size == 0 or np.any(np.diff(visual) != 1):
        raise InputError("the prompt must hold one contiguous run of image tokens")
    return visual, np.arange(visual[-1] + 1, len(ids))


@torch.no_grad()
def pruned_logits(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, strategy,
                  image_token_id: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Last-position logits of a transformers LLaVA under hard pruning, and the kept positions per boundary."""
    n_layer = model.config.text_config.num_hidden_layers
    visual, query = image_span(input_ids, image_token_id)
    control = HardPruning(strategy, strategy.boundaries(n_layer), n_layer, visual, query, input_ids.shape[1])
    with controlled(model, control):
        out = model(input_ids=input_ids, pixel_values=pixel_values)
    return out.logits[0, -1].float().numpy(), control.kept
