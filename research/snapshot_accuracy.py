#!/usr/bin/env python3
"""Greedy accuracy of a stage-2 snapshot in PyTorch (float32) on a question file, per question type.

  python research/snapshot_accuracy.py --checkpoint WORK/stage2-start --lora WORK/lora/lora.safetensors \
      --data OUT/data-val-mix/val.jsonl

Scores every turn of every record the way the stage-2 trainer validates (`train.projector.validate`: each answer
token must be the argmax given the ones before it), on the unquantized checkpoint with the LoRA adapters applied.
Given the one-question file `atp bench quality` wrote, it measures the same questions as that run of the q8_0 GGUF:
the two figures side by side say how much of an answer rate is the model's and how much the quantized runtime's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.train import lora  # noqa: E402
from atp_cli.train.data import load_samples  # noqa: E402
from atp_cli.train.model_io import image_setup, load_model  # noqa: E402
from atp_cli.train.projector import FeatureCache, validate  # noqa: E402


def score(checkpoint: Path, adapters: Path, samples: list, rank: int = 16) -> dict[str, tuple[int, int]]:
    """Greedy answers right per question type, (right, asked), of the checkpoint with the LoRA adapters applied."""
    model, tokenizer, _ = load_model(checkpoint, 0)
    size, n_visual, mean, std = image_setup(model, checkpoint)
    lora.inject(model.model.language_model, rank)
    lora.load(model.model.language_model, adapters)
    model.eval()
    features = FeatureCache(model, size, mean, std)
    return validate(model, tokenizer, samples, lambda s: features(s.image), n_visual)


def summary(tally: dict[str, tuple[int, int]]) -> str:
    """'right/asked = rate: type right/asked ...'"""
    right, asked = sum(r for r, _ in tally.values()), sum(n for _, n in tally.values())
    return f"{right}/{asked} = {right / asked:.1%}: " + " ".join(f"{k} {r}/{n}" for k, (r, n) in tally.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="the llava-hf checkpoint stage 2 started from")
    ap.add_argument("--lora", type=Path, required=True, help="the snapshot's lora.safetensors")
    ap.add_argument("--rank", type=int, default=16, help="the adapters' rank")
    ap.add_argument("--data", type=Path, required=True, help="LLaVA-format JSONL to score")
    args = ap.parse_args()
    print(summary(score(args.checkpoint, args.lora, load_samples(args.data), args.rank)))


if __name__ == "__main__":
    main()
