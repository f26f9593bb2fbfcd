"""Training data in LLaVA's format: a JSON list or JSONL of {"image", "conversations"} records.

    {"image": "img/0001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the circle?"},
                       {"from": "gpt", "value": "Red."}]}

Image paths are relative to the data file. The first human/gpt pair of each record is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atp_cli.errors import InputError

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Sample:
    image: Path
    question: str  # without the placeholder
    answer: str


def _parse(record: dict, base: Path, where: str) -> Sample:
    try:
        conv = record["conversations"]
        human = next(t["value"] for t in conv if t["from"] == "human")
        gpt = next(t["value"] for t in conv if t["from"] == "gpt")
        image = base / record["image"]
    except (KeyError, StopIteration, TypeError) as e:
        raise InputError(f"{where}: not a LLaVA record with an image and a human/gpt pair ({e})") from e
    return Sample(image, human.replace(IMAGE_PLACEHOLDER, "").strip(), gpt.strip())


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


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of one training example; `labels` is -100 except on the answer."""

    input_ids: np.ndarray
    labels: np.ndarray
    visual: np.ndarray  # positions of the image tokens
    query: np.ndarray  # positions of the text after the image, up to the answer


def chat_prompt(tokenizer, question: str) -> tuple[str, str]:
    """The chat-template text before and after the image for a single user turn."""
    marker = "\x00IMAGE\x00"
    messages = [{"role": "user", "content": f"{marker}\n{question}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = text.split(marker, 1)
    return before, after


def encode_sample(tokenizer, sample: Sample, image_token_id: int, n_visual: int) -> PromptTokens:
    before, after = chat_prompt(tokenizer, sample.question)
    ids_before = tokenizer(before, add_special_tokens=True)["input_ids"]
    ids_after = tokenizer(after, add_special_tokens=False)["input_ids"]
    answer = tokenizer(sample.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = ids_before + [image_token_id] * n_visual + ids_after + answer
    labels = [-100] * (len(ids) - len(answer)) + answer
    v0 = len(ids_before)
    visual = np.arange(v0, v0 + n_visual)
    query = np.arange(v0 + n_visual, v0 + n_visual + len(ids_after))
    return PromptTokens(np.array(ids), np.array(labels), visual, query)
