#!/usr/bin/env python3
"""Greedy accuracy of a stage-2 snapshot in PyTorch (float32) on a question file, per question type.

  python scripts/snapshot_accuracy.py --checkpoint WORK/stage2-start --lora WORK/lora/lora.safetensors \
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="the llava-hf checkpoint stage 2 started from")
    ap.add_argument("--lora", type=Path, required=True, help="the snapshot's lora.safetensors")
    ap.add_argument("--rank", type=int, default=16, help="the adapters' rank")
    ap.add_argument("--data", type=Path, required=True, help="LLaVA-format JSONL to score")
    args = ap.parse_args()
    model, tokenizer, _ = load_model(args.checkpoint, 0)
    size, n_visual, mean, std = image_setup(model, args.checkpoint)
    lora.inject(model.model.language_model, args.rank)
    lora.load(model.model.language_model, args.lora)
    model.eval()
    features = FeatureCache(model, size, mean, std)
    tally = validate(model, tokenizer, load_samples(args.data), lambda s: features(s.image), n_visual)
    right, asked = sum(r for r, _ in tally.values()), sum(n for _, n in tally.values())
    print(f"{right}/{asked} = {right / asked:.1%}: " + " ".join(f"{k} {r}/{n}" for k, (r, n) in tally.items()))


if __name__ == "__main__":
    main()
