"""Exact-match accuracy of a Pipeline on a LLaVA-format split, per question type and per strategy."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atp_cli.data.scenes import exact_match
from atp_cli.pipeline import Pipeline


@dataclass
class Score:
    strategy: str
    correct: int = 0
    total: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    tokens_avg: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def load_split(path: str | Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        r["image_path"] = path.parent / r["image"]
        r["question"] = r["conversations"][0]["value"].replace("<image>", "").strip()
        r["answer"] = r["conversations"][1]["value"]
    return rows[:limit] if limit else rows


def evaluate(pipe: Pipeline, rows: Sequence[dict], strategies: Sequence[str],
             on_item: Callable[[str, dict, str, bool], None] | None = None) -> list[Score]:
    scores = []
    for name in strategies:
        pipe.set_strategy(name)
        score = Score(name)
        tokens = []
        for row in rows:
            result = pipe(row["image_path"], row["question"])
            ok = exact_match(result.text, row["answer"])
            score.correct += ok
            score.total += 1
            kind = row.get("kind", "all")
            score.by_kind[kind][0] += ok
            score.by_kind[kind][1] += 1
            tokens.append(result.stats.visual_tokens_avg)
            if on_item is not None:
                on_item(name, row, result.text, ok)
        score.tokens_avg = sum(tokens) / len(tokens) if tokens else 0.0
        scores.append(score)
    return scores
