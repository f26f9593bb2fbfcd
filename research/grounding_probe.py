#!/usr/bin/env python3
"""Can the default model's language model learn to read its visual tokens? A one-shape probe, three token sources.

  python research/grounding_probe.py --tokens projector --lr 1e-3 --steps 80    # DINOv2 -> projector (+ LoRA)
  python research/grounding_probe.py --tokens oracle-word --steps 30            # colour word's embedding on the shape
  python research/grounding_probe.py --tokens oracle-mean --steps 20            # mean of colour and shape embeddings

Data: 600 training and 30 validation images, each one shape (radius 30-60 px) of one of six colours on a light
background, with five questions (its colour, 'is it <colour>?' yes and no, its shape, its quadrant), packed per
image.
`projector` trains the projector and rank-16 LoRA adapters through the real tower (train.projector);
the oracle sources replace every visual token by SmolLM2's own embedding of what covers the patch (the exact
colour word, or the mean of the colour and shape words; 'background' elsewhere) and train only LoRA. Greedy
accuracy per question type on the validation images is printed every 10 (oracles) or 20 (projector) steps.
--base is a llava-hf checkpoint of the default model (scripts/train_default_model.py writes one to <work>/base).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.scenes import COLOURS, SHAPES, SIZE, Item, _draw, _quadrant, patch_regions  # noqa: E402
from atp_cli.default_model import assemble_checkpoint  # noqa: E402
from atp_cli.train import lora  # noqa: E402
from atp_cli.train.align import WordTargets  # noqa: E402
from atp_cli.train.data import encode_packed, load_samples  # noqa: E402
from atp_cli.train.model_io import bf16_is_fast, load_model  # noqa: E402
from atp_cli.train.projector import ProjectorConfig, packed_loss, train_projector, validate  # noqa: E402
from research.snapshot_accuracy import summary  # noqa: E402

SUFFIX = " Answer with a word or two."


def write(root: Path, name: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        r = int(rng.integers(30, 60))
        x, y = (int(v) for v in rng.integers(r + 4, SIZE - r - 4, 2))
        it = Item(SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(6))], x, y, r)
        background = tuple(int(v) for v in rng.integers(200, 256, 3))
        rel = f"img/{name}{i}.png"
        _draw([it], background, None).save(root / rel)
        wrong = list(COLOURS)[(list(COLOURS).index(it.colour) + 1 + int(rng.integers(5))) % 6]
        asked = [("What colour is the shape?", it.colour), (f"Is the shape {it.colour}?", "yes"),
                 (f"Is the shape {wrong}?", "no"), ("What shape is it?", it.shape),
                 ("Where is the shape?", _quadrant(it))]
        conv = []
        for k, (q, a) in enumerate(asked):
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q + SUFFIX},
                     {"from": "gpt", "value": a}]
        lines.append(json.dumps({"image": rel, "kinds": ["colour", "yes", "no", "shape", "position"], "conversations": conv}))
    path = root / f"{name}.jsonl"
    path.write_text("\n".join(lines))
    return path


def oracle_run(base: Path, train_path: Path, val_path: Path, mean_of_two: bool, lr: float, steps: int) -> None:
    model, tok = oracle_model(base)
    words = WordTargets(tok, model.model.language_model.embed_tokens.weight)

    def tokens_of(sample) -> torch.Tensor:
        im = np.asarray(Image.open(sample.image).convert("RGB")).astype(int)
        colour, shape = sample.turns[0][1], sample.turns[3][1]
        regions = patch_regions((np.abs(im - np.array(COLOURS[colour])).sum(-1) == 0).astype(np.uint8), 24)
        on = (colour, shape) if mean_of_two else (colour,)
        return words([on if r else ("background",) for r in regions])

    train_on_oracle(model, tok, load_samples(train_path), load_samples(val_path)[:20], tokens_of, lr, steps, 10)


def oracle_model(base: Path):
    """(model, tokenizer) of a llava-hf checkpoint whose projector passes its rows through unchanged, every weight
    frozen: the oracle rows are already embeddings."""
    model, tok, _ = load_model(base, 0)
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.multi_modal_projector = torch.nn.Identity()
    return model, tok


def train_on_oracle(model, tok, train: list, val: list, tokens_of, lr: float, steps: int, every: int,
                    seed: int = 0) -> None:
    """Rank-16 LoRA on packed records of 4 images a step whose visual tokens are `tokens_of(sample)` (one row of
    embedding per image token of the checkpoint, 576 for the default model); greedy accuracy per type on `val`
    printed every `every` steps and after the last."""
    opt = torch.optim.AdamW(lora.inject(model.model.language_model, 16), lr=lr)
    image_id, rng, t0 = model.config.image_token_index, random.Random(seed), time.perf_counter()
    n_visual = model.config.image_seq_length
    device = next(model.parameters()).device  # the GPU when load_model found one; the oracle rows live there too
    bf16 = bf16_is_fast(device)
    for step in range(steps):
        opt.zero_grad()
        losses = []
        for s in rng.sample(train, 4):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                total, n = packed_loss(model, encode_packed(tok, s, image_id, n_visual), tokens_of(s))
            (total / n / 4).backward()
            losses.append(float(total.detach()) / n)
        opt.step()
        print(step, round(float(np.mean(losses)), 3), round(time.perf_counter() - t0), flush=True)
        if (step + 1) % every == 0 or step + 1 == steps:
            print(f"  val {summary(validate(model, tok, val, tokens_of, n_visual, bf16=bf16))}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", choices=["projector", "oracle-word", "oracle-mean"], required=True)
    ap.add_argument("--base", type=Path, default=Path("/tmp/atp-default/base"))
    ap.add_argument("--projector", type=Path, help="a projector.safetensors to assemble into a fresh base instead")
    ap.add_argument("--work", type=Path, default=Path("/tmp/atp-probe"))
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (and the projector's by default)")
    ap.add_argument("--projector-lr", type=float, help="projector learning rate in --tokens projector (0: frozen)")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    (args.work / "img").mkdir(parents=True, exist_ok=True)
    train_path, val_path = write(args.work, "train", 600, 0), write(args.work, "val", 30, 1)
    if args.projector is not None:
        args.base = assemble_checkpoint(args.work / "base", args.projector)  # with the tower layers it reads
    if args.tokens != "projector":
        oracle_run(args.base, train_path, val_path, args.tokens == "oracle-mean", args.lr, args.steps)
        return
    t0 = time.perf_counter()
    train_projector(args.base, train_path, args.work / "out",
                    ProjectorConfig(steps=args.steps, accumulate=4, llm_lr=args.lr, lora_rank=16, bf16=True,
                                    lr=args.lr if args.projector_lr is None else args.projector_lr,
                                    validate_every=20, save_every=10_000),
                    on_step=lambda e: print(e.step, round(e.loss, 3), round(time.perf_counter() - t0),
                                            e.validation or "", flush=True),
                    validation=val_path)


if __name__ == "__main__":
    main()
