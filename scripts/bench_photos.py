#!/usr/bin/env python3
"""Does the model say it does not know? The demo photos asked the scenes' and mosaics' questions, beside test scenes.

  python scripts/bench_photos.py [--model DIR] [--per-photo 6] [--scenes 60] [--strategy none] [--out DIR]

Each of the demo photos (`atp data --photos`; never trained on) is asked --per-photo questions of test scenes and
mosaics (alternately), the way the training data asks them; an honest model answers "I don't know", a model that
only knows shapes names a colour or a garment. Beside them, --scenes test questions of the benchmarks' mix, where
"I don't know" is wrong: the price of the honesty. Prints and writes (photos.json, photos.md under --out) the
share of "I don't know" on the photos, per photo with its answers, and on the scenes with their accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.bench.report import commit, machine, write_atomic, write_json  # noqa: E402
from atp_cli.data import mosaics, photo_questions, scenes  # noqa: E402
from atp_cli.data.mix import make_mixed_example  # noqa: E402
from atp_cli.data.photos import PHOTOS, photo  # noqa: E402
from atp_cli.data.scenes import PROMPT_SUFFIX, exact_match  # noqa: E402


def photo_questions_for(index: int, n: int) -> list[str]:
    """n questions of test scenes (even k) and mosaics (odd k), distinct, for photo `index`."""
    out: list[str] = []
    k = index * n * 2
    while len(out) < n:
        source = scenes if k % 2 == 0 else mosaics
        question = source.make_example("test", k).question
        if question not in out:
            out.append(question)
        k += 1
    return out


def main() -> None:
    from atp_cli.default_model import DEFAULT_DIR, build_default_model
    from atp_cli.pipeline import Pipeline, PipelineConfig
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.runtime.log import quiet_llama_logs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder (default: the default model)")
    ap.add_argument("--per-photo", type=int, default=6)
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--strategy", default="none")
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: every core)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "photos")
    args = ap.parse_args()
    if args.per_photo < 1 or args.scenes < 0:
        ap.error("--per-photo must be at least 1 and --scenes at least 0")
    quiet_llama_logs()  # the answers, not llama.cpp's per-image messages
    folder = args.model or build_default_model(DEFAULT_DIR)
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024, n_threads=args.threads))
    per_photo: dict[str, list[tuple[str, str]]] = {}
    scene_rows: list[dict] = []
    with Pipeline.from_dir(folder, args.strategy, cfg) as pipe:
        for i, name in enumerate(PHOTOS):
            image = photo(name)
            per_photo[name] = [(q, pipe(image, q + PROMPT_SUFFIX).text.strip())
                               for q in photo_questions_for(i, args.per_photo)]
            print(name, [a for _, a in per_photo[name]], flush=True)
        for i in range(args.scenes):
            ex = make_mixed_example("test", i)
            answer = pipe(ex.image, ex.question + PROMPT_SUFFIX).text.strip()
            scene_rows.append({"kind": ex.kind, "answer": answer, "correct": exact_match(answer, ex.answer),
                               "dont_know": exact_match(answer, photo_questions.ANSWER)})
    asked = sum(len(v) for v in per_photo.values())
    honest = sum(exact_match(a, photo_questions.ANSWER) for v in per_photo.values() for _, a in v)
    result = {
        "model": str(folder), "strategy": args.strategy, "machine": machine(), "commit": commit(),
        "command": "python scripts/bench_photos.py " + " ".join(sys.argv[1:]),
        "photos": {"asked": asked, "dont_know": honest,
                   "per_photo": {k: [{"question": q, "answer": a} for q, a in v] for k, v in per_photo.items()}},
        "scenes": {"asked": len(scene_rows), "dont_know": sum(r["dont_know"] for r in scene_rows),
                   "correct": sum(r["correct"] for r in scene_rows), "rows": scene_rows},
    }
    lines = [f"Photos: \"I don't know\" to {honest} of {asked} questions ({honest / asked:.0%}); test scenes: "
             f"{result['scenes']['dont_know']} of {len(scene_rows)}, {result['scenes']['correct']} right.", "",
             "| photo | \"I don't know\" | the other answers |", "|---|---|---|"]
    for name, qa in per_photo.items():
        others = Counter(a for _, a in qa if not exact_match(a, photo_questions.ANSWER))
        shown = ", ".join(f"{a} ({n})" if n > 1 else a for a, n in others.most_common()) or "-"
        lines.append(f"| {name} | {sum(exact_match(a, photo_questions.ANSWER) for _, a in qa)} of "
                     f"{len(qa)} | {shown} |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_json(args.out / "photos.json", result)
    write_atomic(args.out / "photos.md", table)


if __name__ == "__main__":
    main()
