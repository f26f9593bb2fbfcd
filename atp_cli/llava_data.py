"""Question data in LLaVA's format: a JSON list or JSONL of {"image", "conversations"} records.

    {"image": "img/0001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the circle?"},
                       {"from": "gpt", "value": "Red."}]}

Image paths are relative to the data file. Every human/gpt pair of a record is kept (`Sample.turns`). The one
reader of such files: training (`atp_cli.train`) and evaluation (`atp_cli.evaluation`) both use it. Pure Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from atp_cli.errors import InputError

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Sample:
    image: Path
    turns: tuple[tuple[str, str], ...]  # (question without the placeholder, answer), in the record's order
    kinds: tuple[str, ...] = ()  # question type per turn, where the record names them (generated data does)
    objects: int | None = None  # how many things the image shows, where the record says (generated data does)

    @property
    def question(self) -> str:
        return self.turns[0][0]

    @property
    def answer(self) -> str:
        return self.turns[0][1]


def _parse(record: dict, base: Path, where: str) -> Sample:
    try:
        conv = record["conversations"]
        humans = [t["value"] for t in conv if t["from"] == "human"]
        gpts = [t["value"] for t in conv if t["from"] == "gpt"]
        image = base / record["image"]
    except (KeyError, TypeError) as e:
        raise InputError(f"{where}: not a LLaVA record with an image and a human/gpt pair ({e})") from e
    if not humans or not gpts or not all(isinstance(v, str) for v in humans + gpts):
        raise InputError(f"{where}: not a LLaVA record with an image and a human/gpt pair")
    turns = tuple((h.replace(IMAGE_PLACEHOLDER, "").strip(), g.strip()) for h, g in zip(humans, gpts))
    kinds = record.get("kinds") or ([record["kind"]] if "kind" in record else [])
    objects = record.get("objects")
    if objects is not None and (isinstance(objects, bool) or not isinstance(objects, int) or objects < 0):
        raise InputError(f"{where}: 'objects' must be a count (an integer >= 0), got {objects!r}")
    return Sample(image, turns, tuple(str(k) for k in kinds[: len(turns)]), objects)


def load_samples(path: str | Path) -> list[Sample]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read training data {path}: {e}") from e
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is neither a JSON list nor JSONL: {e}") from e
    samples = [_parse(r, path.parent, f"{path} record {i}") for i, r in enumerate(records)]
    if not samples:
        raise InputError(f"{path} holds no records")
    return samples
