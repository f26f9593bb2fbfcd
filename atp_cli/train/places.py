"""Keeping each visual token's place: where on the grid its patch lies, readable from the projector's output.

The projector is aligned to words that leave position out (`train.align`), so its tokens keep what a patch shows
and lose where it is, although the tower's features carry it almost perfectly (research/feature_layer_probe.py).
The language model still tells top from bottom by distance in the sequence, half the image apart, but left from
right is the column, the sequence index modulo the grid width, which it does not recover. Two ways put the place
back: `PlaceProbe` as an extra loss while the projector trains on questions (`ProjectorConfig.keep_places`), and
`imprint_places`, a cheap projector-only pass before that which writes the place in while holding every token near
what it was, so that adapters trained on the old tokens still read them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from atp_cli.errors import InputError
from atp_cli.train.model_io import image_setup, load_model
from atp_cli.train.trainer import StepLog

ImageSource = Path | Image.Image  # a file or an image in memory (generated examples)


AMPLITUDE = 0.25  # each coordinate's reach along its direction, as a share of the tokens' RMS norm


class PlaceProbe(torch.nn.Module):
    """Reads each visual token's grid place as two coordinates, row and column in [-1, 1], from its projections
    onto two learned unit directions, scaled by the tokens' RMS norm.

    The scale is fixed (`amplitude`): a coordinate of 1 is a projection of `amplitude` times the RMS norm. A free
    linear read-out would let the probe grow while the place it reads shrinks to a trace no language model would
    notice; here the loss is low only if the place takes a real share of every token, about 2 amplitude^2 / 3 of its
    energy for both coordinates. Its weights are the trainer's, never shipped: the adapters learn their own
    read-out. Given `directions` (2, dim), row and column are read along those, fixed, instead of learned ones."""

    def __init__(self, dim: int, n_visual: int, amplitude: float = AMPLITUDE,
                 directions: torch.Tensor | None = None) -> None:
        super().__init__()
        self.grid = math.isqrt(n_visual)
        if self.grid * self.grid != n_visual:
            raise InputError(f"a place probe needs a square grid of visual tokens, got {n_visual}")
        if not amplitude > 0:
            raise InputError(f"the place amplitude must be > 0, got {amplitude}")
        self.amplitude = amplitude
        if directions is None:
            self.directions = torch.nn.Parameter(torch.randn(2, dim))
        elif directions.shape != (2, dim):
            raise InputError(f"place directions must be (2, {dim}), got {tuple(directions.shape)}")
        else:
            self.register_buffer("directions", directions.detach().float().clone())
        self.offset = torch.nn.Parameter(torch.zeros(2))

    def _read(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(read coordinates, true coordinates), both (tokens, 2) over every token of (..., n_visual, dim)."""
        n_visual = projected.shape[-2]
        if n_visual != self.grid * self.grid:
            raise InputError(f"the probe reads {self.grid * self.grid} tokens per image, got {n_visual}")
        x = projected.float().reshape(-1, projected.shape[-1])
        rms = x.pow(2).sum(-1).mean().sqrt().detach().clamp_min(1e-12)
        unit = torch.nn.functional.normalize(self.directions, dim=-1)
        read = (x / rms) @ unit.T / self.amplitude + self.offset
        place = torch.arange(n_visual, device=x.device).repeat(x.shape[0] // n_visual)
        true = torch.stack([place // self.grid, place % self.grid], -1).float()
        return read, (2 * true + 1) / self.grid - 1  # cell centres, -1 < c < 1

    def loss(self, projected: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the read row and column (tokens of each image in row-major order); tokens that
        carry no place are best read as the mean, at E[c^2] = (1 - 1 / grid^2) / 3."""
        read, true = self._read(projected)
        return torch.nn.functional.mse_loss(read, true)

    def side_accuracy(self, projected: torch.Tensor) -> float:
        """Share of tokens whose read column lies on the correct side, left or right of the centre."""
        with torch.no_grad():
            read, true = self._read(projected)
            return float(((read[:, 1] > 0) == (true[:, 1] > 0)).float().mean())


@dataclass(frozen=True)
class ImprintConfig:
    steps: int = 1500
    batch: int = 8  # images per step
    lr: float = 1e-4  # the projector's
    probe_lr: float = 1e-2
    weight: float = 1.0  # of the place loss against the drift from the starting projector's tokens
    amplitude: float = AMPLITUDE  # the place's share of each token (PlaceProbe)
    in_words: bool = False  # along the language model's "bottom" - "top" and "right" - "left" (else learned)
    seed: int = 0

    def __post_init__(self) -> None:  # checked before minutes of assembling and tower passes, not after
        if self.steps < 0 or self.batch < 1:
            raise InputError(f"imprinting needs steps >= 0 and batch >= 1, got {self.steps} and {self.batch}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise InputError(f"the imprint's place weight must be finite and >= 0, got {self.weight}")
        if not (self.amplitude > 0 and math.isfinite(self.amplitude)):
            raise InputError(f"the place amplitude must be finite and > 0, got {self.amplitude}")


def word_directions(model, tokenizer) -> torch.Tensor:
    """(2, dim): the language model's embedding of "bottom" minus "top" (rows grow downwards) and of "right" minus
    "left": a place written along them reads to the language model as those words, which it already knows how to
    carry from a visual token to its answer."""
    from atp_cli.train.align import WordTargets

    words = WordTargets(tokenizer, model.model.language_model.embed_tokens.weight)
    return torch.stack([words.word("bottom") - words.word("top"), words.word("right") - words.word("left")])


def imprint_places(checkpoint: str | Path, images: Sequence[ImageSource], out: str | Path,
                   cfg: ImprintConfig = ImprintConfig(), held_out: Sequence[ImageSource] = (),
                   on_step: Callable[[StepLog], None] | None = None) -> Path:
    """Train the projector of `checkpoint` alone, on the tower's features of `images`, to minimise
    drift + weight * place loss, where drift is the squared distance of each token from the starting projector's,
    relative to that token set's mean squared norm; writes `out`/projector.safetensors. The last step's log carries,
    on `held_out` images, the probe's left / right accuracy and the drift in thousandths."""
    from atp_cli.train.projector import FeatureCache, save_projector

    if not images:
        raise InputError("imprinting places needs at least one image")
    checkpoint, out = Path(checkpoint), Path(out)
    model, tokenizer, device = load_model(checkpoint, cfg.seed)
    size, n_visual, mean, std = image_setup(model, checkpoint)
    dim = model.config.text_config.hidden_size  # the probe first: a grid it cannot read fails before the tower runs
    probe = PlaceProbe(dim, n_visual, cfg.amplitude, word_directions(model, tokenizer) if cfg.in_words else None)
    probe = probe.to(device)
    tower = FeatureCache(model, size, mean, std)
    seen = torch.stack([tower.compute(p) for p in images])
    check = torch.stack([tower.compute(p) for p in held_out]) if held_out else None
    projector = model.model.multi_modal_projector
    anchor = copy.deepcopy(projector).requires_grad_(False)
    opt = torch.optim.AdamW([{"params": list(projector.parameters()), "lr": cfg.lr},
                             {"params": list(probe.parameters()), "lr": cfg.probe_lr}],
                            weight_decay=0.0)  # decay would pull the projector off its start with no loss asking
    gen = torch.Generator().manual_seed(cfg.seed)

    def drift(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new, old = projector(x.float()), anchor(x.float())
        return ((new - old) ** 2).sum(-1).mean() / (old ** 2).sum(-1).mean(), new

    for step in range(cfg.steps):
        pick = torch.randperm(len(seen), generator=gen)[: min(cfg.batch, len(seen))]
        moved, projected = drift(seen[pick])
        loss = moved + cfg.weight * probe.loss(projected)
        opt.zero_grad()
        loss.backward()
        opt.step()
        measured = None
        if check is not None and step + 1 == cfg.steps:
            with torch.no_grad():
                moved, projected = drift(check)
            measured = {"left/right": (round(1000 * probe.side_accuracy(projected)), 1000),
                        "drift": (round(1000 * float(moved)), 1000)}
        if on_step is not None:
            on_step(StepLog(step, float(loss.detach()), float(moved.detach()), 0.0, math.nan, measured))
    save_projector(model, out / "projector.safetensors")
    return out
