"""The projector stage (LLaVA's stage 1; with LoRA adapters a cheap stand-in for its stage 2), on packed questions.

On a CPU the image tokens dominate every forward pass (576 of ~600). A record's questions about one image are
therefore packed into one sequence that holds the image once, each question in its own branch
(`train.data.PackedTokens`): K questions cost about one image's pass, and each is computed exactly as a
single-turn example would be (tested). The vision tower is frozen: its features are computed once per image,
without gradients, and kept for later epochs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atp_cli.errors import InputError
from atp_cli.image_input import load_image, pixel_values
from atp_cli.train import lora
from atp_cli.train.data import (PackedTokens, Sample, encode_packed, first_turn_weights, focused, load_samples,
                                rebalance_turns, turn_weights)
from atp_cli.train.model_io import bf16_is_fast, copy_side_files, image_setup, load_model
from atp_cli.train.places import PlaceProbe
from atp_cli.train.trainer import StepLog


@dataclass(frozen=True)
class ProjectorConfig:
    steps: int = 500
    accumulate: int = 4  # records (images) per optimiser step
    lr: float = 1e-3
    seed: int = 0
    save_every: int = 25  # steps between snapshots of projector.safetensors (and lora.safetensors) in `out`
    lora_rank: int = 0  # > 0: the language model learns LoRA adapters alongside the projector (stage 2)
    llm_lr: float = 2e-4
    bf16: bool = False  # bfloat16 autocast for the language model where the hardware has it (bf16_is_fast)
    validate_every: int = 50  # steps between measurements on the validation records (when given)
    warmup: int = 10  # steps of linear learning-rate warm-up; constant after it (up to decay_from)
    decay_from: int | None = None  # from this step on, the learning rates fall linearly to 0 at `steps` (None: kept)
    init_lora: Path | None = None  # adapters to start from (e.g. the committed ones) instead of B = 0; same rank
    resume_from: Path | None = None  # a previous run's `out`: continue from its snapshot up to `steps` in all
    resumed_steps: int | None = None  # steps behind that snapshot, when it has no trainer_state.pt to say so
    deadline_s: float | None = None  # stop (with a snapshot and a validation) once this many seconds have passed
    rebalance: bool = False  # thin later turns whose answers are skewed against first turns (data.rebalance_turns)
    weight_first: bool = False  # weight each turn's loss toward the first turns' mix (data.first_turn_weights)
    focus: tuple[tuple[str, float], ...] = ()  # (type, factor): those types' turns weigh more (data.focused)
    curriculum: int = 0  # steps over which records come easy-first, few objects to many (`_order`); 0: none
    keep_places: float = 0.0  # > 0: weight of the loss that keeps each token's grid row and column readable
    places_lr: float = 1e-3  # that loss's probe's learning rate (kept in trainer_state.pt, never shipped)


def tower_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, n_visual, d_vision): the tower's hidden states at the feature layer, selected as LlavaModel does."""
    cfg = model.config
    with torch.no_grad():
        states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    layer = cfg.vision_feature_layer
    h = states[layer] if isinstance(layer, int) else torch.cat([states[i] for i in layer], dim=-1)
    return h[:, 1:] if cfg.vision_feature_select_strategy == "default" else h


def answer_logits(model, tokens: PackedTokens, features: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (R, V), targets (R,), rows (R,)) at the R rows of the packed sequence that predict an answer token.

    `features` (n_visual, d_vision) are the tower's; the projector runs here so that it gets gradients."""
    lm = model.model.language_model
    device = features.device
    embeds = lm.embed_tokens(torch.from_numpy(tokens.input_ids).to(device))  # (T, D)
    projected = model.model.multi_modal_projector(features.float())  # (n_visual, D)
    embeds = embeds.index_copy(0, torch.from_numpy(tokens.visual).to(device), projected.to(embeds.dtype))
    allowed = torch.from_numpy(tokens.allowed()).to(device)
    bias = torch.zeros(allowed.shape, dtype=embeds.dtype, device=device)
    bias = bias.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[None, None]  # (1, 1, T, T) additive
    positions = torch.from_numpy(tokens.positions)[None].to(device)
    hidden = lm(inputs_embeds=embeds[None], attention_mask=bias, position_ids=positions).last_hidden_state[0]
    labels = torch.from_numpy(tokens.labels).to(device)
    rows = torch.nonzero(labels[1:] != -100).squeeze(1)  # the logits at t predict token t + 1
    return model.lm_head(hidden[rows]).float(), labels[rows + 1], rows  # only the answer rows: the vocabulary is large


def packed_loss(model, tokens: PackedTokens, features: torch.Tensor, weights: np.ndarray | None = None
                ) -> tuple[torch.Tensor, float]:
    """(summed cross-entropy of every answer token of the packed sequence, how many there are); with `weights`
    (one per turn) each token's cross-entropy counts with its turn's weight, and the count is the weights' sum,
    so that total / count stays a mean per answer token (a turn of weight 0 is as if it were not there)."""
    logits, targets, rows = answer_logits(model, tokens, features)
    per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    if weights is None:
        return per_token.sum(), len(targets)
    turn = torch.from_numpy(tokens.block)[rows.cpu() + 1] - 1  # answer rows lie in turns 1..K
    token_weights = torch.from_numpy(weights).to(per_token)[turn.to(per_token.device)]
    return (per_token * token_weights).sum(), float(token_weights.sum())


def turn_matches(model, tokens: PackedTokens, features: torch.Tensor, eos_id: int) -> list[bool]:
    """Per turn: would greedy decoding start with the answer? (every answer token is the argmax given the ones
    before it; the end-of-turn token is not required, as exact match accepts 'top left corner' for 'top left')."""
    with torch.no_grad():
        logits, targets, rows = answer_logits(model, tokens, features)
    hit = (logits.argmax(-1) == targets) | (targets == eos_id)
    turn = torch.from_numpy(tokens.block).to(rows.device)[rows + 1]
    return [bool(hit[turn == k].all()) for k in range(1, int(tokens.block.max()) + 1)]


class FeatureCache:
    """Tower features per image path, computed on first use (float16 in memory: 0.4 MB per 576 x 384 image)."""

    def __init__(self, model, size: int, mean, std) -> None:
        self.model, self.size, self.mean, self.std = model, size, mean, std
        self.device = next(model.parameters()).device
        self._store: dict[Path, torch.Tensor] = {}

    def compute(self, image) -> torch.Tensor:
        """(n_visual, d_vision) float16 for a path or an image in memory, not kept (PIL images are no dict keys)."""
        px = torch.from_numpy(pixel_values(load_image(image), self.size, self.mean, self.std))[None]
        return tower_features(self.model, px.to(self.device))[0].to(torch.float16)

    def __call__(self, image: Path) -> torch.Tensor:
        if image not in self._store:
            self._store[image] = self.compute(image)
        return self._store[image]


def lr_factor(step: int, cfg: ProjectorConfig) -> float:
    """The learning rates' multiplier at optimiser step `step` (0-based): a linear warm-up, then constant, and with
    `decay_from` a linear fall to zero over the last steps (warm-up, stable, decay). It depends on the step alone, so
    a constant-rate snapshot can be resumed into its decay, and a resumed run equals an uninterrupted one."""
    factor = min(1.0, (step + 1) / max(cfg.warmup, 1))
    if cfg.decay_from is not None and step >= cfg.decay_from:
        factor *= (cfg.steps - step) / (cfg.steps - cfg.decay_from)
    return factor


CURRICULUM_START = 0.25  # the easiest share of the records a curriculum draws from at its first step


def _order(samples: list[Sample], seed: int, curriculum: int = 0):
    """Records in a fresh seeded permutation each epoch; with `curriculum` > 0, first that many records drawn
    easy-first: ranked by how many things their image shows (`Sample.objects`; ties and records without a count in
    seeded random places), the k-th drawn at random from the easiest share k / curriculum of the ranking (at least
    CURRICULUM_START), so one object and few cells come first and the whole set is in play by the end of the ramp."""
    rng = random.Random(seed)
    if curriculum > 0:
        known = [s.objects for s in samples if s.objects is not None]
        low, high = (min(known), max(known)) if known else (0, 0)
        keys = [(s.objects if s.objects is not None else rng.uniform(low, high), rng.random()) for s in samples]
        ranked = [samples[i] for i in sorted(range(len(samples)), key=keys.__getitem__)]
        for k in range(curriculum):
            share = max(CURRICULUM_START, (k + 1) / curriculum)
            yield ranked[rng.randrange(max(1, math.ceil(share * len(ranked))))]
    while True:
        epoch = list(samples)
        rng.shuffle(epoch)
        yield from epoch


def validate(model, tokenizer, samples: list[Sample], visual: Callable[[Sample], torch.Tensor], n_visual: int,
             bf16: bool = False) -> dict[str, tuple[int, int]]:
    """Greedy answers right per question type, (right, asked), over every turn of `samples`; `visual(sample)`
    gives the rows that enter the projector (the tower's features, or any stand-in for them)."""
    image_id = model.config.image_token_index
    device = next(model.parameters()).device
    tally: dict[str, list[int]] = {}
    for sample in samples:
        tokens = encode_packed(tokenizer, sample, image_id, n_visual)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hits = turn_matches(model, tokens, visual(sample), tokenizer.eos_token_id)
        for k, hit in enumerate(hits):
            kind = sample.kinds[k] if k < len(sample.kinds) else "all"
            tally.setdefault(kind, [0, 0])
            tally[kind][0] += int(hit)
            tally[kind][1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(tally.items())}


def train_projector(checkpoint: str | Path, data: str | Path, out: str | Path, cfg: ProjectorConfig = ProjectorConfig(),
                    on_step: Callable[[StepLog], None] | None = None, validation: str | Path | None = None) -> Path:
    """Only the projector learns (tower and language model frozen), or with `lora_rank` > 0 the projector and
    LoRA adapters of the language model; next-token loss on every answer of every record (with `weight_first`
    weighted toward the first turns' mix of types and answers). With `validation`
    records, every `validate_every` steps (and at the end) the step log carries greedy accuracy per type.

    Writes projector.safetensors (and lora.safetensors) to `out`; without LoRA also the whole checkpoint."""
    checkpoint, out = Path(checkpoint), Path(out)
    if cfg.decay_from is not None and not 0 <= cfg.decay_from < cfg.steps:
        raise InputError(f"decay_from must lie in [0, steps = {cfg.steps}), got {cfg.decay_from}")
    if not 0 <= cfg.curriculum <= cfg.steps:
        raise InputError(f"curriculum must lie in [0, steps = {cfg.steps}], got {cfg.curriculum}")
    if cfg.init_lora is not None and cfg.lora_rank <= 0:
        raise InputError("init_lora needs LoRA adapters to load into (lora_rank > 0)")
    samples = load_samples(data)
    if cfg.rebalance:
        samples = rebalance_turns(samples, cfg.seed)
    weights = focused(first_turn_weights(samples) if cfg.weight_first else None, samples, dict(cfg.focus))
    held_out = load_samples(validation) if validation is not None else []
    model, tokenizer, device = load_model(checkpoint, cfg.seed)
    size, n_visual, mean, std = image_setup(model, checkpoint)
    bf16 = cfg.bf16 and bf16_is_fast(device)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.model.multi_modal_projector.parameters()) if cfg.lr > 0 else []  # lr 0: kept frozen
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": params, "lr": cfg.lr}] if params else []
    lm = model.model.language_model
    if cfg.lora_rank > 0:
        groups.append({"params": lora.inject(lm, cfg.lora_rank), "lr": cfg.llm_lr})
        if cfg.init_lora is not None:
            lora.load(lm, Path(cfg.init_lora))
    if not groups:
        raise InputError("nothing to train: the projector's learning rate is 0 and there are no LoRA adapters")
    probe = PlaceProbe(lm.config.hidden_size, n_visual).to(device) if cfg.keep_places > 0 else None
    if probe is not None:
        groups.append({"params": list(probe.parameters()), "lr": cfg.places_lr})
    opt = torch.optim.AdamW(groups)
    start = _resume(model, opt, cfg, probe) if cfg.resume_from is not None else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(start + k, cfg))
    features = FeatureCache(model, size, mean, std)
    image_id = model.config.image_token_index
    records = _order(samples, cfg.seed, cfg.curriculum * cfg.accumulate)
    for _ in range(start * cfg.accumulate):  # the records the earlier steps took, so the order goes on as it was
        next(records)
    began = time.monotonic()
    for step in range(start, cfg.steps):
        opt.zero_grad()
        losses = []
        for _ in range(cfg.accumulate):
            sample = next(records)
            tokens = encode_packed(tokenizer, sample, image_id, n_visual)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                seen = features(sample.image)
                total, count = packed_loss(model, tokens, seen,
                                           turn_weights(sample, weights) if weights is not None else None)
                places = (cfg.keep_places * probe.loss(model.model.multi_modal_projector(seen.float()))
                          if probe is not None else 0.0)
            (total / count / cfg.accumulate + places / cfg.accumulate).backward()
            losses.append(float(total.detach()) / count)
        opt.step()
        schedule.step()
        last = step + 1 == cfg.steps or (cfg.deadline_s is not None and time.monotonic() - began >= cfg.deadline_s)
        measured = (validate(model, tokenizer, held_out, lambda x: features(x.image), n_visual, bf16)
                    if held_out and ((step + 1) % cfg.validate_every == 0 or last) else None)
        if on_step is not None:
            on_step(StepLog(step, float(np.mean(losses)), float(np.mean(losses)), 0.0, float(n_visual), measured))
        if (step + 1) % cfg.save_every == 0 or last:
            save_projector(model, out / "projector.safetensors")
            if cfg.lora_rank > 0:
                lora.save(lm, out / "lora.safetensors")
            _save_state(opt, step + 1, out / STATE, probe)
        if last:
            break
    if cfg.lora_rank > 0:
        return out
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    copy_side_files(checkpoint, out)
    return out


STATE = "trainer_state.pt"  # optimiser moments and the step count of a snapshot: what an exact resume needs


def _save_state(opt: torch.optim.Optimizer, step: int, path: Path, probe: PlaceProbe | None = None) -> None:
    tmp = path.with_name(path.name + ".part")
    extra = {"probe": probe.state_dict()} if probe is not None else {}
    torch.save({"step": step, "optimizer": opt.state_dict(), **extra}, tmp)
    tmp.replace(path)


def _resume(model, opt: torch.optim.Optimizer, cfg: ProjectorConfig, probe: PlaceProbe | None = None) -> int:
    """Load the snapshot in `cfg.resume_from` into `model` (projector when it learns, LoRA adapters) and, when the
    snapshot kept them, the optimiser's moments and the place probe; returns the steps already taken. Without
    trainer_state.pt the moments start afresh (the run then differs slightly from an uninterrupted one) and
    `resumed_steps` is needed."""
    from safetensors.torch import load_file

    src = Path(cfg.resume_from)
    state = torch.load(src / STATE, weights_only=True) if (src / STATE).is_file() else None
    if state is None and cfg.resumed_steps is None:
        raise InputError(f"{src} has no {STATE}: say how many steps its snapshot took (resumed_steps)")
    start = int(state["step"]) if state is not None else int(cfg.resumed_steps)
    if cfg.resumed_steps is not None and start != cfg.resumed_steps:
        raise InputError(f"{src} holds a snapshot of step {start}, not {cfg.resumed_steps}")
    if not 0 < start < cfg.steps:
        raise InputError(f"{src} holds step {start}; nothing to do for a run of {cfg.steps} steps")
    if state is not None and ("probe" in state) != (probe is not None):
        raise InputError(f"{src} was trained {'with' if 'probe' in state else 'without'} keep_places: resume it "
                         "with the same setting")
    if probe is not None:
        if state is None:
            raise InputError(f"{src} has no {STATE} with the place probe that keep_places resumes")
        probe.load_state_dict(state["probe"])
    if cfg.lora_rank > 0:
        lora.load(model.model.language_model, src / "lora.safetensors")
    if cfg.lr > 0:
        model.model.multi_modal_projector.load_state_dict(load_file(str(src / "projector.safetensors")))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    return start


def save_projector(model, path: Path) -> None:
    """The projector alone (a few MB): what the default model commits. The tower layer(s) it reads go into the
    file's metadata (`default_model.read_projector`)."""
    import json

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata={"vision_feature_layer": json.dumps(model.config.vision_feature_layer)})
    tmp.replace(path)
