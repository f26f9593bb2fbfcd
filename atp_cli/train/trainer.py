"""`atp train`: learn the ATP threshold nets on a transformers LlavaForConditionalGeneration.

Loss = next-token loss on the answer + lambda_b * |tokens averaged over all layers / n_visual - budget|
(+ optional distillation to the unpruned model's answer distribution). The language model can stay frozen,
get LoRA adapters (peft), or be fine-tuned. Batch size 1 with gradient accumulation: CPU-friendly, and every
image keeps its own thresholds. Output: ATP weights (safetensors) for `atp convert --atp`, plus the tuned
checkpoint when the language model was trained.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from atp_cli.errors import InputError
from atp_cli.image_input import load_image, pixel_values
from atp_cli.pruning.atp import ThresholdMLP
from atp_cli.pruning.config import AtpConfig, default_boundaries
from atp_cli.pruning.store import AtpWeights, save_safetensors
from atp_cli.train import lora
from atp_cli.train.attention import controlled
from atp_cli.train.data import Sample, encode_sample, load_samples
from atp_cli.train.model_io import copy_side_files, image_setup, load_model
from atp_cli.train.soft_prune import SoftPruning, make_nets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    budget: float = 144.0  # visual tokens averaged over all layers (paper metric)
    boundaries: tuple[int, ...] | None = None  # None: default_boundaries(depth)
    steps: int = 200
    accumulate: int = 4
    lr: float = 1e-3
    lambda_budget: float = 2.0
    distill: float = 0.0  # weight of KL to the unpruned model on answer tokens
    llm: str = "freeze"  # freeze | lora | finetune
    lora_rank: int = 8
    llm_lr: float = 1e-4
    temperature: float = 10.0
    straight_through: bool = False  # True: forward with inference's hard keep decision, soft mask's gradient
    start_thresholds: tuple[float, float] | None = None  # (theta_r, theta_sp) every module starts at; None: keep all
    hidden: int = 64
    debias: bool = False  # relevance from distance-debiased attention, as the modules will run (AtpConfig.debias)
    seed: int = 0


@dataclass
class StepLog:
    step: int
    loss: float
    next_token: float
    budget_loss: float
    tokens_avg: float
    validation: dict[str, tuple[int, int]] | None = None  # question type -> (answered right, asked), when measured


def _llm_params(model, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.llm == "freeze":
        return []
    lm = model.model.language_model
    if cfg.llm == "finetune":
        for p in lm.parameters():
            p.requires_grad_(True)
        return list(lm.parameters())
    if cfg.llm == "lora":
        return lora.inject(lm, cfg.lora_rank)
    raise InputError(f"--llm must be freeze, lora or finetune, got {cfg.llm!r}")


def train(checkpoint: str | Path, data: str | Path, out: str | Path, cfg: TrainConfig = TrainConfig(),
          on_step: Callable[[StepLog], None] | None = None, save_model: str | Path | None = None) -> AtpWeights:
    checkpoint = Path(checkpoint)
    if cfg.start_thresholds is not None:
        ThresholdMLP.constant(*cfg.start_thresholds)  # refuses impossible thresholds before the model loads
    samples = load_samples(data)
    model, tokenizer, device = load_model(checkpoint, cfg.seed)
    n_layer = model.config.text_config.num_hidden_layers
    size, n_visual, mean, std = image_setup(model, checkpoint)
    if not 0 < cfg.budget <= n_visual:
        raise InputError(f"budget must be in (0, {n_visual}] visual tokens, got {cfg.budget}")
    grid = int(math.isqrt(n_visual))
    atp = AtpConfig(n_layer=n_layer, boundaries=cfg.boundaries or default_boundaries(n_layer),
                    temperature=cfg.temperature, grid=(grid, grid), hidden=cfg.hidden, debias=cfg.debias)
    atp.validate()
    nets = make_nets(atp, cfg.start_thresholds).to(device)
    llm_params = _llm_params(model, cfg)
    groups = [{"params": nets.parameters(), "lr": cfg.lr}]
    if llm_params:
        groups.append({"params": llm_params, "lr": cfg.llm_lr})
    opt = torch.optim.AdamW(groups)
    model.train(bool(llm_params))
    image_id = model.config.image_token_index
    for step in range(cfg.steps):
        opt.zero_grad()
        logs = [_one_example(model, tokenizer, nets, atp, random.choice(samples), image_id, n_visual, size,
                             mean, std, cfg) for _ in range(cfg.accumulate)]
        opt.step()
        entry = StepLog(step, *(float(np.mean([lg[k] for lg in logs])) for k in range(4)))
        if on_step is not None:
            on_step(entry)
    weights = AtpWeights(atp, tuple(n.export() for n in nets.cpu()))
    save_safetensors(weights, out)
    if save_model is not None and llm_params:
        _save_tuned(model, tokenizer, checkpoint, Path(save_model), cfg)
    return weights


def _one_example(model, tokenizer, nets, atp: AtpConfig, sample: Sample, image_id: int, n_visual: int,
                 size: int, mean, std, cfg: TrainConfig) -> tuple[float, float, float, float]:
    tokens = encode_sample(tokenizer, sample, image_id, n_visual)
    device = next(model.parameters()).device
    ids = torch.from_numpy(tokens.input_ids)[None].to(device)
    labels = torch.from_numpy(tokens.labels)[None].to(device)
    pixels = torch.from_numpy(pixel_values(load_image(sample.image), size, mean, std))[None].to(device)
    teacher = None
    if cfg.distill > 0:
        with torch.no_grad():
            teacher = model(input_ids=ids, pixel_values=pixels).logits
    control = SoftPruning(atp, nets, torch.from_numpy(tokens.visual).to(device),
                          torch.from_numpy(tokens.query).to(device), ids.shape[1], cfg.straight_through)
    with controlled(model, control):
        out = model(input_ids=ids, pixel_values=pixels, labels=labels)
    tokens_avg = control.average_tokens(atp.n_layer)
    budget_loss = (tokens_avg / n_visual - cfg.budget / n_visual).abs()
    loss = out.loss + cfg.lambda_budget * budget_loss
    if teacher is not None:
        answer = labels[0] != -100
        answer_rows = torch.roll(answer, -1)  # logits at t predict token t+1
        kl = torch.nn.functional.kl_div(torch.log_softmax(out.logits[0, answer_rows], -1),
                                        torch.log_softmax(teacher[0, answer_rows], -1), log_target=True,
                                        reduction="batchmean")
        loss = loss + cfg.distill * kl
    (loss / cfg.accumulate).backward()
    return float(loss.detach()), float(out.loss.detach()), float(budget_loss.detach()), float(tokens_avg.detach())


def _save_tuned(model, tokenizer, src: Path, dst: Path, cfg: TrainConfig) -> None:
    """Save the tuned checkpoint (LoRA merged) in the llava-hf layout for `atp convert`."""
    if cfg.llm == "lora":
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        state = {k: v for k, v in model.state_dict().items() if "lora_" not in k and "base_layer" not in k}
        state.update({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".base_layer." in k})
        model.save_pretrained(dst, state_dict=state)
    else:
        model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    copy_side_files(src, dst)
    (dst / "atp_train.json").write_text(json.dumps(asdict(cfg), indent=2))
