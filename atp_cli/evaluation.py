"""A LLaVA-format split as rows for `atp bench quality` (which scores them: atp_cli/bench/quality.py)."""

from __future__ import annotations

import json
from pathlib import Path


def load_split(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first question of every record (up to `limit` records)."""
    rows = load_turns(path, 1)
    return rows[:limit] if limit else rows


def load_turns(path: str | Path, per_image: int) -> list[dict]:
    """Up to `per_image` questions of every record, evenly spaced over its turns, each a row of its own (asked in a
    fresh conversation): image_path, question, answer and kind (the question type; 'all' when the record has none)."""
    path = Path(path)
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        conv = record["conversations"]
        n_turns = len(conv) // 2
        kinds = record.get("kinds") or [record.get("kind", "all")] * n_turns
        asked = min(per_image, n_turns)
        for t in (i * n_turns // asked for i in range(asked)):
            rows.append({"image_path": path.parent / record["image"], "kind": kinds[t],
                         "question": conv[2 * t]["value"].replace("<image>", "").strip(),
                         "answer": conv[2 * t + 1]["value"]})
    return rows
