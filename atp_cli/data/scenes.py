"""Rendered scenes: shapes of known colours at known places, questions whose answers are exact.

Each example is drawn from its own seed (split, index), so splits are fixed, reproducible and disjoint by
construction: `train`, `val` and `test` use different seed streams and the test split is never used to tune.
Question types (they make the model look at particular regions): colour of a shape, count by colour or by
shape, position of a shape (quadrant), left/right relation between two shapes, a short word written in the
image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from atp_cli.errors import InputError

SIZE = 336
SPLITS = {"train": 0, "val": 1, "test": 2}
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "purple": (140, 60, 170), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "map", "box", "key", "cup", "hat", "pen", "car")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
QUESTION_TYPES = ("colour", "count_colour", "count_shape", "position", "relation", "text")


@dataclass(frozen=True)
class Item:
    shape: str
    colour: str
    x: int  # centre
    y: int
    r: int


@dataclass(frozen=True)
class Example:
    image: Image.Image
    question: str
    answer: str
    kind: str


def _place(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """n non-overlapping (x, y, r) circles of room inside the canvas."""
    spots: list[tuple[int, int, int]] = []
    while len(spots) < n:
        r = int(rng.integers(22, 40))
        x, y = (int(v) for v in rng.integers(r + 4, SIZE - r - 4, 2))
        if all((x - a) ** 2 + (y - b) ** 2 > (r + c + 8) ** 2 for a, b, c in spots):
            spots.append((x, y, r))
    return spots


def _draw(items: list[Item], background: tuple[int, int, int], word: str | None) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), background)
    d = ImageDraw.Draw(im)
    for it in items:
        box = (it.x - it.r, it.y - it.r, it.x + it.r, it.y + it.r)
        fill = COLOURS[it.colour]
        if it.shape == "circle":
            d.ellipse(box, fill=fill)
        elif it.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(it.x, it.y - it.r), (it.x - it.r, it.y + it.r), (it.x + it.r, it.y + it.r)], fill=fill)
    if word:
        d.text((SIZE // 2, SIZE - 30), word.upper(), fill=(0, 0, 0), anchor="mm", font=ImageFont.load_default(36))
    return im


def _quadrant(it: Item) -> str:
    return f"{'top' if it.y < SIZE / 2 else 'bottom'} {'left' if it.x < SIZE / 2 else 'right'}"


def make_example(split: str, index: int, kind: str | None = None) -> Example:
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([SPLITS[split], index])
    kind = kind or QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
    n = int(rng.integers(1, 6)) if kind.startswith("count") else int(rng.integers(2, 5))
    spots = _place(rng, n)
    items = [Item(SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))], x, y, r)
             for x, y, r in spots]
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    word = WORDS[int(rng.integers(len(WORDS)))] if kind == "text" else None
    question, answer = _ask(kind, items, word, rng)
    return Example(_draw(items, background, word), question, answer, kind)


def _describe(it: Item) -> str:
    return f"{it.colour} {it.shape}"


def _ask(kind: str, items: list[Item], word: str | None, rng: np.random.Generator) -> tuple[str, str]:
    target = items[int(rng.integers(len(items)))]
    if kind == "colour":
        same = [i for i in items if i.shape == target.shape]
        where = "" if len(same) == 1 else f" in the {_quadrant(target)}"
        return f"What colour is the {target.shape}{where}?", target.colour
    if kind == "count_colour":
        return f"How many {target.colour} shapes are there?", NUMBERS[sum(i.colour == target.colour for i in items)]
    if kind == "count_shape":
        return f"How many {target.shape}s are there?", NUMBERS[sum(i.shape == target.shape for i in items)]
    if kind == "position":
        return f"Where is the {_describe(target)}?", _quadrant(target)
    if kind == "relation":
        other = next(i for i in items if i is not target)
        left = target.x < other.x
        return f"Is the {_describe(target)} left of the {_describe(other)}?", "yes" if left else "no"
    if kind == "text":
        return "What word is written in the image?", word
    raise InputError(f"unknown question type {kind!r}")


def normalise(answer: str) -> str:
    """Exact-match form: lower case, no punctuation, digits as words."""
    text = "".join(ch for ch in answer.lower().strip() if ch.isalnum() or ch.isspace())
    words = [NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in text.split()]
    return " ".join(words)


def exact_match(prediction: str, answer: str) -> bool:
    """The answer's words appear as the prediction, or as its first words ('Red.' and 'red' match 'red')."""
    p, a = normalise(prediction).split(), normalise(answer).split()
    return p[: len(a)] == a


MakeExample = Callable[[str, int], Example]


def write_split(out: str | Path, split: str, n: int, start: int = 0, make: MakeExample = make_example) -> Path:
    """Write n examples as PNG files and a LLaVA-format JSONL (`{split}.jsonl`) into `out`.

    `make(split, index)` draws each example (scenes by default), so every source shares one record format.
    """
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, start + n):
        ex = make(split, i)
        rel = f"{split}/{i:06d}.png"
        tmp = out / f"{rel}.part"
        ex.image.save(tmp, format="PNG")
        os.replace(tmp, out / rel)
        lines.append(json.dumps({"id": f"{split}-{i}", "image": rel, "kind": ex.kind, "conversations": [
            {"from": "human", "value": f"<image>\n{ex.question} Answer with a word or two."},
            {"from": "gpt", "value": ex.answer}]}))
    path = out / f"{split}.jsonl"
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
