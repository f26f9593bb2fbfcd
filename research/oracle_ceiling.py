#!/usr/bin/env python3
"""How far can stage 2 take the language model if the projector were perfect? Oracle tokens on the full mix.

  python research/oracle_ceiling.py --base /tmp/atp-ml/base --data /tmp/atp-ml/data/train.jsonl \
      --val /tmp/atp-pos/val/val.jsonl --steps 40 --every 20 [--no-positions]

Every visual token is replaced by exactly what stage 1 regresses the projector onto (`train.align.target_words`:
SmolLM2's embedding of the words that cover the patch - colour and shape, or the Fashion-MNIST item, with the
quadrant words unless --no-positions; the written word; "background"), so the language model sees the answer's
evidence without the tower's or the projector's errors. Only rank-16 LoRA learns, as in stage 2 (same records,
4 images x all their questions a step, learning rate 1e-3), and greedy accuracy per question type on every turn of
the validation records is printed every --every steps. The records must come from the generated mix
(`atp data ... --source mix` or train_default_model.py's work folder): an image named N.png in a `train` or `val`
folder is example N of that split, regenerated here to know its patches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.mix import make_mixed_example  # noqa: E402
from atp_cli.data.scenes import Example  # noqa: E402
from atp_cli.train.align import WordTargets, target_words  # noqa: E402
from atp_cli.train.data import Sample, load_samples  # noqa: E402
from research.grounding_probe import oracle_model, train_on_oracle  # noqa: E402

GRID = 24


def example_of(sample: Sample) -> Example:
    """The generated example behind a record of the mix: its image is `<split>/<index>.png`."""
    return make_mixed_example(sample.image.parent.name, int(sample.image.stem))


def oracle_tokens(words: WordTargets, positions: bool):
    """sample -> (576, D) oracle rows, cached per image."""
    cache: dict[Path, torch.Tensor] = {}

    def tokens_of(sample: Sample) -> torch.Tensor:
        if sample.image not in cache:
            cache[sample.image] = words(target_words(example_of(sample), GRID, positions))
        return cache[sample.image]

    return tokens_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="a llava-hf checkpoint of the default model")
    ap.add_argument("--data", type=Path, required=True, help="training records (JSONL) of the generated mix")
    ap.add_argument("--val", type=Path, required=True, help="validation records (JSONL) of the generated mix")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=20, help="steps between validations")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--positions", action=argparse.BooleanOptionalAction, default=True,
                    help="quadrant words in the oracle rows")
    args = ap.parse_args()
    model, tok = oracle_model(args.base)
    tokens_of = oracle_tokens(WordTargets(tok, model.model.language_model.embed_tokens.weight), args.positions)
    train_on_oracle(model, tok, load_samples(args.data), load_samples(args.val), tokens_of, args.lr, args.steps,
                    args.every, seed=1)


if __name__ == "__main__":
    main()
