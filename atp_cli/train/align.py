"""Patch-to-word alignment: the projector's first stage for the default model, with no language-model pass.

LLaVA aligns its projector through the frozen language model on captions: one forward and backward pass through
the whole decoder per image. On two CPU cores that reaches a few thousand images, too few for the model to learn
where to look. Generated images know what covers every patch (`Example.patch_words`), so the projector is instead
regressed onto the language model's own word embeddings: a patch on a red circle in the top left should read like
"red circle top left", a background patch like "background". The cost is one tower pass per image; the packed
question stage (`train.projector`) then tunes the projector further through the language model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from atp_cli.data.scenes import Example
from atp_cli.errors import InputError
from atp_cli.train.model_io import image_setup, load_model
from atp_cli.train.projector import FeatureCache, save_projector
from atp_cli.train.trainer import StepLog

BACKGROUND = ("background",)


@dataclass(frozen=True)
class AlignConfig:
    steps: int = 400
    batch: int = 8  # images per step
    lr: float = 1e-3
    background_weight: float = 0.2  # most patches are background: they count less
    positions: bool = True  # targets include the quadrant words ("top", "left", ...) where the source gives them
    seed: int = 0


POSITION_WORDS = frozenset({"top", "bottom", "left", "right"})


class WordTargets:
    """Patch targets: the mean of the words' embeddings, a word's embedding the mean of its tokens' (as in text,
    after a space)."""

    def __init__(self, tokenizer, embed: torch.Tensor) -> None:
        self.tokenizer, self.embed = tokenizer, embed.detach()
        self._words: dict[str, torch.Tensor] = {}

    def word(self, word: str) -> torch.Tensor:
        if word not in self._words:
            ids = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            self._words[word] = self.embed[ids].float().mean(0)
        return self._words[word]

    def __call__(self, words: Sequence[tuple[str, ...]]) -> torch.Tensor:
        """(P, D) one target row per patch."""
        return torch.stack([torch.stack([self.word(w) for w in ws]).mean(0) for ws in words])


@dataclass
class _Patches:
    features: torch.Tensor  # (N, P, d_vision) float16
    targets: torch.Tensor  # (N, P, D)
    weights: torch.Tensor  # (N, P)


def target_words(example: Example, grid: int, positions: bool = True) -> list[tuple[str, ...]]:
    """The words each patch's token is aligned to (without the quadrant words unless `positions`)."""
    words = example.patch_words(grid)
    if words is None:
        raise InputError(f"{type(example).__name__} does not know what covers its patches")
    return words if positions else [tuple(w for w in ws if w not in POSITION_WORDS) for ws in words]


def _patches(model, examples: Sequence[Example], targets: WordTargets, size: int, mean, std,
             positions: bool = True) -> _Patches:
    grid = size // model.config.vision_config.patch_size
    tower = FeatureCache(model, size, mean, std)
    feats, goals, weights = [], [], []
    for ex in examples:
        words = target_words(ex, grid, positions)
        feats.append(tower.compute(ex.image))
        goals.append(targets(words))
        weights.append(torch.tensor([1.0 if w != BACKGROUND else 0.0 for w in words]))
    return _Patches(torch.stack(feats), torch.stack(goals), torch.stack(weights))


def patch_accuracy(projector, patches: _Patches) -> float:
    """Share of object patches whose output is nearer to their own target than to any other target that occurs."""
    with torch.no_grad():
        out = projector(patches.features.float()).reshape(-1, patches.targets.shape[-1])
        goals = patches.targets.reshape(-1, patches.targets.shape[-1])
        objects = patches.weights.reshape(-1) > 0
        table, index = torch.unique(goals, dim=0, return_inverse=True)
        nearest = torch.cdist(out[objects], table).argmin(1)
        return float((nearest == index[objects]).float().mean())


def align_projector(checkpoint: str | Path, train: Sequence[Example], out: str | Path,
                    cfg: AlignConfig = AlignConfig(), held_out: Sequence[Example] = (),
                    on_step: Callable[[StepLog], None] | None = None) -> Path:
    """Train the projector of `checkpoint` so that each patch's visual token lands on its words' embedding;
    writes `out`/projector.safetensors. With `held_out` examples, the last step's log carries their patch accuracy
    (as `validation['patches']`: (right, of 1000))."""
    checkpoint, out = Path(checkpoint), Path(out)
    model, tokenizer, _ = load_model(checkpoint, cfg.seed)
    size, _, mean, std = image_setup(model, checkpoint)
    targets = WordTargets(tokenizer, model.model.language_model.embed_tokens.weight)
    data = _patches(model, train, targets, size, mean, std, cfg.positions)
    check = _patches(model, held_out, targets, size, mean, std, cfg.positions) if held_out else None
    projector = model.model.multi_modal_projector
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.features)
    for step in range(cfg.steps):
        pick = torch.randperm(n, generator=gen)[: min(cfg.batch, n)]
        pred = projector(data.features[pick].float())  # (B, P, D)
        err = ((pred - data.targets[pick]) ** 2).mean(-1)  # (B, P)
        w = data.weights[pick] + cfg.background_weight * (1 - data.weights[pick])
        loss = (err * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        measured = None
        if check is not None and step + 1 == cfg.steps:
            measured = {"patches": (int(round(1000 * patch_accuracy(projector, check))), 1000)}
        if on_step is not None:
            on_step(StepLog(step, float(loss.detach()), float(loss.detach()), 0.0, math.nan, measured))
    save_projector(model, out / "projector.safetensors")
    return out

