#!/usr/bin/env python3
"""Can stage 2 teach one question type with data of that type alone? A continuation trained only on its questions.

  python research/focused_probe.py --work /tmp/atp-ml --kind fashion_count --steps 40

Takes the training records of WORK/data/train.jsonl whose first question is of --kind, keeps that question alone, and
continues the stage-2 snapshot in WORK/lora (projector frozen, LoRA adapters learning, the snapshot's optimiser
state) on them for --steps optimiser steps of 4 records. Every --validate-every steps it scores the first questions of
that kind among --val-images records of the validation split (float32 greedy, as the stage-2 trainer validates),
and once before the first step. The answer shares of those questions are printed too: an accuracy at the most common
answer's share is a prior, not a reading of the image. The snapshot and the data are read, never written; the run
writes into WORK/focused-KIND.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.mix import MIX, write_mixed_split  # noqa: E402
from atp_cli.train.data import load_samples  # noqa: E402
from atp_cli.train.projector import STATE, ProjectorConfig, train_projector  # noqa: E402
from research.snapshot_accuracy import score, summary  # noqa: E402


def first_questions(src: Path, kind: str, out: Path) -> Path:
    """`src`'s records whose first question is of `kind`, with that question alone and absolute image paths."""
    kept = []
    for line in src.read_text().splitlines():
        record = json.loads(line)
        if record.get("kinds", [None])[0] == kind:
            record.update(image=str((src.parent / record["image"]).resolve()), kinds=[kind],
                          conversations=record["conversations"][:2])
            kept.append(json.dumps(record))
    if not kept:
        sys.exit(f"{src} has no record whose first question is {kind!r}")
    out.write_text("\n".join(kept) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a train_default_model.py work folder after stage 2")
    ap.add_argument("--kind", default="fashion_count")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--validate-every", type=int, default=10)
    ap.add_argument("--val-images", type=int, default=300)
    ap.add_argument("--llm-lr", type=float, default=1e-3)
    args = ap.parse_args()
    out = args.work / f"focused-{args.kind}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    snapshot = out / "start"
    shutil.copytree(args.work / "lora", snapshot)  # train_projector writes into the folder it resumes from
    train = first_questions(args.work / "data" / "train.jsonl", args.kind, out / "train.jsonl")
    val_all = write_mixed_split(out / "val-all", "val", args.val_images, MIX)
    val = first_questions(val_all, args.kind, out / "val.jsonl")
    answers = Counter(s.answer.lower() for s in load_samples(val))
    print(f"{len(load_samples(train))} training and {sum(answers.values())} validation questions; validation answers "
          + ", ".join(f"{a} {n}" for a, n in answers.most_common()), flush=True)

    checkpoint = args.work / "stage2-start"
    print(f"before: {summary(score(checkpoint, snapshot / 'lora.safetensors', load_samples(val)))}", flush=True)
    start = int(torch.load(snapshot / STATE, weights_only=True)["step"])
    cfg = ProjectorConfig(steps=start + args.steps, lr=0.0, llm_lr=args.llm_lr, lora_rank=16, bf16=False, seed=1,
                          validate_every=args.validate_every, resume_from=snapshot, save_every=10 ** 9)

    def progress(entry) -> None:
        if entry.validation:
            print(f"step {entry.step + 1} (loss {entry.loss:.3f}): {summary(entry.validation)}", flush=True)

    train_projector(checkpoint, train, snapshot, cfg, validation=val, on_step=progress)


if __name__ == "__main__":
    main()
