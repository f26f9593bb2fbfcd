"""A LLaVA-format split as rows for `atp bench quality` (which scores them: atp_cli/bench/quality.py)."""

from __future__ import annotations

from pathlib import Path

from atp_cli.errors import InputError
from atp_cli.llava_data import load_samples


def load_split(path: str | Path, limit: int | None = None, check_images: bool = True) -> list[dict]:
    """The first question of every record (up to `limit` records)."""
    rows = load_turns(path, 1, check_images)
    return rows[:limit] if limit else rows


def load_turns(path: str | Path, per_image: int, check_images: bool = True) -> list[dict]:
    """Up to `per_image` questions of every record, evenly spaced over its turns, each a row of its own (asked in a
    fresh conversation): image_path, question, answer and kind (the question type; 'all' when the record has none).

    The file is read and (unless `check_images` is off: scoring stored answers needs no image) every image is checked
    to exist before any model work: a malformed record or a missing image is an InputError naming it."""
    rows = []
    for sample in load_samples(path):
        if check_images and not sample.image.is_file():
            raise InputError(f"{path}: image {sample.image} not found")
        n_turns = len(sample.turns)
        kinds = sample.kinds if len(sample.kinds) == n_turns else (sample.kinds[:1] or ("all",)) * n_turns
        asked = min(per_image, n_turns)
        for t in (i * n_turns // asked for i in range(asked)):
            question, answer = sample.turns[t]
            rows.append({"image_path": sample.image, "kind": kinds[t], "question": question, "answer": answer})
    return rows
