"""A LLaVA-format split as rows for `atp bench quality` (which scores them: atp_cli/bench/quality.py)."""

from __future__ import annotations

import json
from pathlib import Path


def load_split(path: str | Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        r["image_path"] = path.parent / r["image"]
        r["question"] = r["conversations"][0]["value"].replace("<image>", "").strip()
        r["answer"] = r["conversations"][1]["value"]
    return rows[:limit] if limit else rows
