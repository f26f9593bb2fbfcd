#!/usr/bin/env python3
"""Reproduce the default model's trained artifacts (seeded): data -> projector -> projector + LoRA -> ATP modules.

  python scripts/train_default_model.py --work /tmp/atp-default

The committed artifacts (atp_cli/assets_default/) come from three runs: stages 1 and 2 from this script's defaults
in two runs, because stage 2 was resumed from a snapshot that predates the saved optimiser state, and the ATP modules
from a third that writes the calibrated start of stage 3 without training it (research/TRAINING_NOTES.md: 40 trained
steps from there scored 3 of 154 validation questions lower):

  python scripts/train_default_model.py --stages 1,2 --work /tmp/atp-ml --lora-steps 40 --no-photo-questions
  python scripts/train_default_model.py --stages 2 --work /tmp/atp-ml --lora-steps 120 --resume --resumed-steps 40 \
      --no-photo-questions
  python scripts/train_default_model.py --stages 3 --work /tmp/atp-ml --boundaries 2 10 20 --atp-steps 0 \
      --start-thresholds 0.923 0.8

Resuming now keeps the optimiser's moments (trainer_state.pt next to the snapshot), so a resumed run equals an
uninterrupted one; a new recipe is one command.

Data: --train-images generated images (scenes and Fashion-MNIST mosaics mixed), each with --turns questions;
--val-images images of the validation split measure greedy accuracy per question type while training.
Stage 1 aligns the projector patch by patch: each visual token is regressed onto SmolLM2's embeddings of the words
that describe its patch (atp_cli/train/align.py; no language-model pass, so it sees --align-images images cheaply).
The projector reads the tower's hidden states 4 and 12 concatenated (--feature-layer): DINOv2's deep states keep
shape but lose colour, its early ones keep colour (research/feature_layer_probe.py; research/TRAINING_NOTES.md).
Stage 2 trains rank-16 LoRA adapters on every linear layer of SmolLM2 (and the projector, with --lr > 0) on the
questions, packing an image's questions into one sequence that holds the image once (atp_cli/train/projector.py).
Stage 3 trains the ATP threshold modules toward an average of --budget visual tokens (paper metric) with the
language model frozen, on the first question of each record, with the paper's soft masks (--hard-masks: inference's
hard decision forward) and modules before layers 5, 14 and 23 (--boundaries; ATP kept more validation accuracy with
2, 10, 20: research/boundary_ablation.py, research/TRAINING_NOTES.md). --start-thresholds starts every module at one
fixed (theta_r, theta_sp), e.g. the rule `research/boundary_ablation.py --variants const:2-10-20` calibrates to the budget.
The artifacts are written into atp_cli/assets_default/ (projector.safetensors, lora.safetensors,
atp.safetensors). --stages picks the stages to run; a later stage starts from the committed artifacts.
On 2 CPU cores stage 1 takes about 0.3-0.7 s per image (the tower) plus 0.1-0.3 s per step; on CPUs with
AVX512-BF16 (bfloat16 autocast) an optimiser step of 4 images x 8 questions takes about 15 s in stage 2 and a
step of 4 questions about 15 s in stage 3; in float32 on an AVX2-only CPU a stage 2 step of 4 images x 8 questions
took about 45 s and a stage 3 step about 35 s. Learning rates are constant after a 10-step warm-up, so a longer run's
snapshot at step N (saved every 25 steps in --work, with the optimiser's state) equals a run of N steps, and
--resume continues it exactly; --decay-from S lets them fall linearly to zero from step S on, and a snapshot of
step S resumes into that decay. --weight-first-turns weights each turn's loss toward the first questions' mix of
types and answers (what evaluation asks; research/TRAINING_NOTES.md); --focus position=3 multiplies a type's
weight on top; --curriculum STEPS draws records easy-first (fewest objects first) over the first STEPS steps;
--keep-places W trains the projector to keep each token's grid row and column (a linear probe's loss, weight W);
--imprint-places STEPS writes them in before stage 2, on the projector alone, holding its tokens near their start.
A GPU is used when present.

On a lent accelerator (16 cores, one GPU, minutes of time) one command does the whole recipe and leaves the artifacts
in $OUT: `OUT=out python scripts/train_default_model.py --device-run --work /tmp/atp-device --train-images 20000
--lora-steps 100000 --time-budget 300` (stage 2 with the projector learning at 1e-4, bfloat16 on the GPU, stopped
after --time-budget seconds with a snapshot and a validation; then stage 4 calibrates the modules on the CPU);
--imprint-places 1500 --align-images 300 writes the tokens' places into the projector before stage 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data.mix import MIX, TRAINING_MIX, make_mixed_example, write_mixed_split  # noqa: E402
from atp_cli.default_model import ARTIFACTS, artifact_paths, assemble_checkpoint  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.train.align import AlignConfig, align_projector  # noqa: E402
from atp_cli.train.lora import export as export_lora  # noqa: E402
from atp_cli.train.places import AMPLITUDE, ImprintConfig, imprint_places  # noqa: E402
from atp_cli.train.projector import ProjectorConfig, train_projector  # noqa: E402
from atp_cli.train.trainer import StepLog, TrainConfig, train  # noqa: E402


def log(entry: StepLog, t0=time.perf_counter()) -> None:
    tokens = "" if math.isnan(entry.tokens_avg) else f" tokens {entry.tokens_avg:.1f}"  # stage 1 counts none
    print(f"step {entry.step} loss {entry.loss:.4g}{tokens} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if entry.validation:
        right = sum(r for r, _ in entry.validation.values())
        asked = sum(n for _, n in entry.validation.values())
        kinds = " ".join(f"{k} {r}/{n}" for k, (r, n) in entry.validation.items())
        print(f"  validation {right}/{asked} = {right / asked:.1%}: {kinds}", flush=True)


def split_once(out: Path, split: str, n: int, sources: tuple[str, ...], turns: int) -> Path:
    """The split's JSONL, rendered only when `out` does not already hold it from the same parameters and the same
    generator code (a key over both is kept next to it), so later stages skip the ~5 min of rendering."""
    code = b"".join(f.read_bytes() for f in sorted((ROOT / "atp_cli" / "data").glob("*.py")))
    key = hashlib.sha256(json.dumps([split, n, sources, turns]).encode() + code).hexdigest()
    jsonl, stamp = out / f"{split}.jsonl", out / f"{split}.key"
    if jsonl.is_file() and stamp.is_file() and stamp.read_text() == key:
        return jsonl
    stamp.unlink(missing_ok=True)
    written = write_mixed_split(out, split, n, sources, turns=turns)
    stamp.write_text(key)
    return written


def focus_pair(text: str) -> tuple[str, float]:
    """`--focus TYPE=FACTOR`: a question type of the generators and the factor its turns' loss weight is scaled by."""
    from atp_cli.data.mix import ANSWERS

    kind, sep, factor = text.partition("=")
    if not sep or kind not in ANSWERS:
        raise argparse.ArgumentTypeError(f"expected TYPE=FACTOR with TYPE one of {sorted(ANSWERS)}, got {text!r}")
    try:
        value = float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"FACTOR must be a number, got {factor!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"FACTOR must be finite and >= 0, got {factor!r}")
    return kind, value


def device_defaults(args: argparse.Namespace) -> None:
    """--device-run: what an accelerator makes affordable within its few minutes, unless given otherwise; the
    artifacts go to $OUT, which the device tool brings back (a few small files)."""
    import os

    out = os.environ.get("OUT")
    if args.artifacts == ARTIFACTS:
        if not out:
            sys.exit("--device-run writes its artifacts to $OUT (or give --artifacts)")
        args.artifacts = Path(out)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    if "2" in args.stages and args.stages == "1,2,3":
        args.stages = "2,4"
    if args.lr == 0.0:
        args.lr = 1e-4  # the projector learns too
    shutil.copyfile(ARTIFACTS / "projector.safetensors", args.artifacts / "projector.safetensors")


def parallel_split(out: Path, split: str, n: int, sources: tuple[str, ...], turns: int) -> Path:
    """Like split_once, rendered on every core: chunks of the split written side by side, then one JSONL whose image
    paths point into the chunks (the examples are the same as a serial run's: each is seeded by its index)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(os.cpu_count() or 1, n))
    bounds = [(k * n // workers, (k + 1) * n // workers) for k in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_write_chunk, [(out / f"part{k}", split, b - a, sources, a, turns)
                                             for k, (a, b) in enumerate(bounds)]))
    lines = []
    for part in parts:
        for line in part.read_text().splitlines():
            record = json.loads(line)
            record["image"] = f"{part.parent.name}/{record['image']}"
            lines.append(json.dumps(record))
    jsonl = out / f"{split}.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl


def _write_chunk(job: tuple) -> Path:
    folder, split, n, sources, start, turns = job
    return write_mixed_split(folder, split, n, sources, start=start, turns=turns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/atp-default"))
    ap.add_argument("--stages", default="1,2,3",
                    help="comma-separated stages to run (1 alignment, 2 questions + LoRA, 3 ATP training, 4 ATP "
                         "calibration: fixed thresholds and operating points on the assembled model, no torch)")
    ap.add_argument("--train-images", type=int, default=2400)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--turns", type=int, default=8, help="questions per image")
    ap.add_argument("--photo-questions", action=argparse.BooleanOptionalAction, default=True,
                    help="the training split mixes in real photographs whose every question is answered \"I don't "
                         "know\" (atp_cli.data.photo_questions); validation asks scenes and mosaics only")
    ap.add_argument("--align-images", type=int, default=800)
    ap.add_argument("--align-steps", type=int, default=1500)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.0, help="projector learning rate in stage 2 (0: frozen)")
    ap.add_argument("--llm-lr", type=float, default=1e-3, help="LoRA learning rate")
    ap.add_argument("--fp32", action="store_true", help="no bfloat16 autocast in stage 2")
    ap.add_argument("--init-lora", type=Path,
                    help="stage 2 starts its adapters from this lora.safetensors (e.g. the committed one) instead of "
                         "zero: a longer recipe continued from a finished one")
    ap.add_argument("--resume", action="store_true",
                    help="stage 2 continues from the snapshot in WORK/lora up to --lora-steps in all")
    ap.add_argument("--resumed-steps", type=int,
                    help="the steps behind that snapshot, if it predates trainer_state.pt")
    ap.add_argument("--validate-every", type=int, default=50, help="stage 2 steps between validations")
    ap.add_argument("--decay-from", type=int,
                    help="stage 2: from this step on the learning rates fall linearly to 0 at --lora-steps "
                         "(warm-up, stable, decay; a constant-rate snapshot resumes into its decay)")
    ap.add_argument("--rebalance-turns", action="store_true",
                    help="stage 2: thin later turns whose answers are skewed against first turns (mostly 'one' "
                         "for counts; atp_cli.train.data.rebalance_turns)")
    ap.add_argument("--weight-first-turns", action="store_true",
                    help="stage 2: weight each turn's loss by its (type, answer)'s share among first turns over its "
                         "share among all turns (atp_cli.train.data.first_turn_weights)")
    ap.add_argument("--focus", type=focus_pair, nargs="+", default=[], metavar="TYPE=FACTOR",
                    help="stage 2: multiply the loss weight of these question types' turns, e.g. position=3 "
                         "relation=2 (atp_cli.train.data.focused)")
    ap.add_argument("--curriculum", type=int, default=0, metavar="STEPS",
                    help="stage 2: over the first STEPS steps the records come easy-first, from the quarter whose "
                         "images show the fewest objects (one shape, few cells) to all of them (0: none)")
    ap.add_argument("--keep-places", type=float, default=0.0, metavar="WEIGHT",
                    help="stage 2: weight of a loss that keeps each visual token's grid row and column linearly "
                         "readable from the projector's output (left / right is otherwise lost; "
                         "atp_cli.train.places.PlaceProbe)")
    ap.add_argument("--imprint-places", type=int, default=0, metavar="STEPS",
                    help="before stage 2: STEPS projector-only steps on --align-images images that write each token's "
                         "grid place into it while holding the tokens near the starting projector's "
                         "(atp_cli.train.places.imprint_places; 0: none)")
    ap.add_argument("--imprint-weight", type=float, default=1.0,
                    help="--imprint-places: weight of the place loss against the tokens' relative drift")
    ap.add_argument("--imprint-amplitude", type=float, default=AMPLITUDE,
                    help="--imprint-places: each place coordinate's reach as a share of the tokens' RMS norm")
    ap.add_argument("--imprint-in-words", action="store_true",
                    help="--imprint-places: write the place along SmolLM2's embeddings of 'bottom' - 'top' and "
                         "'right' - 'left' instead of learned directions")
    ap.add_argument("--atp-steps", type=int, default=50)
    ap.add_argument("--atp-lr", type=float, default=5e-3)
    ap.add_argument("--budget", type=float, default=144.0)
    ap.add_argument("--lambda-budget", type=float, default=2.0, help="stage 3: weight of the budget loss")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="stage 3: weight of the KL divergence to the unpruned model's answer distribution")
    ap.add_argument("--hard-masks", action="store_true",
                    help="stage 3: forward with inference's hard keep decision (gradient of the soft mask)")
    ap.add_argument("--start-thresholds", type=float, nargs=2, metavar=("THETA_R", "THETA_SP"),
                    help="stage 3: the thresholds every module starts at (default: near keeping everything)")
    ap.add_argument("--boundaries", type=int, nargs="+",
                    help="stage 3: the layers the ATP modules prune before (default: 5 14 23 for 30 layers)")
    ap.add_argument("--operating-points", type=float, nargs="*", default=[64.0, 32.0],
                    help="stage 4: budgets below --budget at which the modules run after a pre-LLM selection")
    ap.add_argument("--theta-sp", type=float, default=0.8, help="stage 4: the fixed SAP threshold")
    ap.add_argument("--debias", action=argparse.BooleanOptionalAction, default=True,
                    help="stages 3 and 4: relevance from distance-debiased attention (atp.scores.debias)")
    ap.add_argument("--calibration-questions", type=int, default=12, help="stage 4: validation questions used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-run", action="store_true",
                    help="the one-shot accelerator recipe: data generated on every core into --work, stage 2 with "
                         "the projector learning too, for at most --time-budget seconds, then stage 4; the artifacts "
                         "and the log go to $OUT (or --artifacts)")
    ap.add_argument("--time-budget", type=float, default=300.0, help="--device-run: seconds of stage-2 training")
    ap.add_argument("--artifacts", type=Path, default=ARTIFACTS,
                    help="where the stages write (and later stages read) the artifacts; default: the committed ones")
    ap.add_argument("--align-positions", action=argparse.BooleanOptionalAction, default=False,
                    help="stage 1 targets include the quadrant words (by default position is left to the sequence)")
    ap.add_argument("--feature-layer", type=int, nargs="+", default=[4, 12],
                    help="stage 1: the tower hidden state(s) the projector reads (several: concatenated, ascending); "
                         "later stages read them from the projector file")
    args = ap.parse_args()
    if args.keep_places < 0 or args.imprint_places < 0:
        raise InputError("--keep-places and --imprint-places must be >= 0")
    if args.device_run:
        device_defaults(args)
    projector, lora, atp = artifact_paths(args.artifacts)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    stages = {int(s) for s in args.stages.split(",") if s.strip()}
    split = parallel_split if args.device_run else split_once
    # stage 1 draws its examples itself and stage 4 asks validation questions of its own: only 2 and 3 read splits
    data = split(args.work / "data", "train", args.train_images, TRAINING_MIX if args.photo_questions else MIX,
                 args.turns) if stages & {2, 3} else None
    val = split(args.work / "val", "val", args.val_images, MIX, args.turns) if 2 in stages else None  # every recipe
    packed = ProjectorConfig(lr=args.lr, llm_lr=args.llm_lr, bf16=not args.fp32, seed=args.seed,
                             validate_every=args.validate_every, resume_from=args.work / "lora" if args.resume else None,
                             resumed_steps=args.resumed_steps, init_lora=args.init_lora, rebalance=args.rebalance_turns,
                             decay_from=args.decay_from, weight_first=args.weight_first_turns,
                             focus=tuple(args.focus), curriculum=args.curriculum, keep_places=args.keep_places,
                             deadline_s=args.time_budget if args.device_run else None)
    if 1 in stages:
        base = assemble_checkpoint(args.work / "base", seed=args.seed, feature_layer=args.feature_layer)
        shown = [make_mixed_example("train", i) for i in range(args.align_images)]
        held_out = [make_mixed_example("val", i) for i in range(args.val_images)]
        every_100 = lambda e: log(e) if e.step % 100 == 0 or e.validation else None  # noqa: E731
        aligning = AlignConfig(steps=args.align_steps, seed=args.seed, positions=args.align_positions)
        stage1 = align_projector(base, shown, args.work / "align", aligning, held_out, on_step=every_100)
        shutil.copyfile(stage1 / "projector.safetensors", projector)
    if 2 in stages:
        if args.imprint_places > 0:
            imprint_stage(args, projector)
        start = assemble_checkpoint(args.work / "stage2-start", projector, seed=args.seed)
        cfg = ProjectorConfig(**{**vars(packed), "steps": args.lora_steps, "seed": args.seed + 1,
                                 "lora_rank": args.lora_rank})
        stage2 = train_projector(start, data, args.work / "lora", cfg, on_step=log, validation=val)
        shutil.copyfile(stage2 / "projector.safetensors", projector)
        export_lora(stage2 / "lora.safetensors", lora)
    if 3 in stages:
        tuned = assemble_checkpoint(args.work / "tuned", projector, seed=args.seed,
                                    lora_path=lora if lora.is_file() else None)
        train(tuned, data, atp, TrainConfig(budget=args.budget,
                                            boundaries=tuple(args.boundaries) if args.boundaries else None,
                                            lambda_budget=args.lambda_budget, straight_through=args.hard_masks,
                                            start_thresholds=tuple(args.start_thresholds) if args.start_thresholds
                                            else None,
                                            steps=args.atp_steps, lr=args.atp_lr, distill=args.distill,
                                            debias=args.debias, seed=args.seed), on_step=log)
    if 4 in stages:
        calibrate_modules(args, atp)
    print(f"wrote {projector}, {lora} and {atp}")


def log_imprint(entry: StepLog) -> None:
    """Every 100th imprint step: the loss and the drift (relative squared distance from the starting tokens); at
    the end the held-out left / right accuracy of the place read-out and the drift."""
    if entry.step % 100 == 0 or entry.validation:
        print(f"imprint step {entry.step} loss {entry.loss:.4g} drift {entry.next_token:.4f}", flush=True)
    if entry.validation:
        print("  held out: " + ", ".join(f"{k} {r / n:.3f}" for k, (r, n) in entry.validation.items()), flush=True)


def imprint_stage(args: argparse.Namespace, projector: Path) -> None:
    """Before stage 2: the projector in `projector` learns, alone on tower features, to carry each token's grid
    place while its tokens stay near the ones the adapters were trained on; it is rewritten in place."""
    cfg = ImprintConfig(steps=args.imprint_places, weight=args.imprint_weight, amplitude=args.imprint_amplitude,
                        in_words=args.imprint_in_words, seed=args.seed)  # a bad value fails here, before assembly
    base = assemble_checkpoint(args.work / "imprint-start", projector, seed=args.seed)
    shown = [make_mixed_example("train", i).image for i in range(args.align_images)]
    held_out = [make_mixed_example("val", i).image for i in range(args.val_images)]
    done = imprint_places(base, shown, args.work / "imprint", cfg, held_out, on_step=log_imprint)
    shutil.copyfile(done / "projector.safetensors", projector)


def calibrate_modules(args: argparse.Namespace, atp: Path) -> None:
    """Stage 4: on the default model assembled from the artifacts, the fixed threshold theta_r every module uses to
    meet --budget, then the operating points below it, on validation questions the validation score never sees
    (indices from 1000 on); written as the ATP artifact."""
    from atp_cli.calibration import calibrate_hybrid, calibrate_thresholds
    from atp_cli.data.scenes import PROMPT_SUFFIX
    from atp_cli.default_model import build_default_model
    from atp_cli.pipeline import Pipeline, PipelineConfig
    from atp_cli.pruning.atp import ThresholdMLP
    from atp_cli.pruning.config import AtpConfig
    from atp_cli.pruning.store import AtpWeights, save_safetensors
    from atp_cli.runtime.context import ContextConfig

    atp.unlink(missing_ok=True)  # the model is assembled without ATP modules, then they are calibrated on it
    folder = build_default_model(args.work / "calibrate", force=True, artifacts=args.artifacts)
    questions = [(e.image, e.question + PROMPT_SUFFIX) for e in
                 (make_mixed_example("val", 1000 + i) for i in range(args.calibration_questions))]
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024))
    with Pipeline.from_dir(folder, "none", cfg) as pipe:
        n_layer = pipe.model.n_layer
        config = AtpConfig(n_layer, tuple(args.boundaries or (2, 10, 20)), grid=(24, 24), debias=args.debias)
        theta, reached = calibrate_thresholds(pipe, questions, args.budget, config, args.theta_sp)
        print(f"theta_r {theta:.4f}, theta_sp {args.theta_sp}: {reached:.1f} tokens (target {args.budget:g})")
        mlps = tuple([ThresholdMLP.constant(theta, args.theta_sp, config.hidden)] * len(config.boundaries))
        pipe.weights = AtpWeights(config, mlps)
        points = [(args.budget, pipe.n_visual)]
        for budget in sorted(args.operating_points, reverse=True):
            keep, got = calibrate_hybrid(pipe, questions, budget)
            print(f"operating point {budget:g}: {keep} rows before the modules -> {got:.1f} tokens")
            points.append((budget, keep))
    save_safetensors(AtpWeights(config, mlps, budgets=tuple(b for b, _ in points),
                                pre_keep=tuple(k for _, k in points)), atp)


if __name__ == "__main__":
    try:
        main()
    except InputError as e:  # a bad option or file (e.g. --curriculum beyond --lora-steps): its message, no traceback
        sys.exit(f"error: {e}")
