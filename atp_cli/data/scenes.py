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

    def patch_words(self, grid: int) -> list[tuple[str, ...]] | None:
        """Per patch of a grid x grid tiling, the words that describe what covers it; None where unknown."""
        return None

    def more_questions(self, rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
        """Up to n further (question, answer, kind) about the same image, none asked twice (nor the example's own);
        none unless the source knows the image's content (`_draw_question`)."""
        asked, out = {self.question}, []
        for _ in range(4 * n):  # small scenes have few distinct questions: stop trying after a while
            if len(out) == n:
                break
            question = self._draw_question(rng)
            if question is not None and question[0] not in asked:
                asked.add(question[0])
                out.append(question)
        return out

    def _draw_question(self, rng: np.random.Generator) -> tuple[str, str, str] | None:
        return None


@dataclass(frozen=True)
class SceneExample(Example):
    items: tuple[Item, ...] = ()
    word: str | None = None

    def patch_words(self, grid: int) -> list[tuple[str, ...]]:
        """Per patch of a grid x grid tiling (row-major), the words that describe what covers it: colour, shape and
        quadrant of a shape, the written word, or ("background",)."""
        regions = Image.new("L", (SIZE, SIZE), 0)
        _paint(ImageDraw.Draw(regions), list(self.items), self.word, list(range(1, len(self.items) + 1)),
               len(self.items) + 1)
        words = [("background",)] + [(it.colour, it.shape, *_quadrant(it).split()) for it in self.items]
        words.append((self.word or "background",))
        return [words[k] for k in patch_regions(np.asarray(regions), grid)]

    def _draw_question(self, rng: np.random.Generator) -> tuple[str, str, str]:
        """A question of a random type that this scene can answer (relations need two shapes, text a word)."""
        kinds = [k for k in QUESTION_TYPES if (k != "relation" or len(self.items) > 1) and (k != "text" or self.word)]
        kind = kinds[int(rng.integers(len(kinds)))]
        return (*_ask(kind, list(self.items), self.word, rng), kind)


def _place(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """n non-overlapping (x, y, r) circles of room inside the canvas."""
    spots: list[tuple[int, int, int]] = []
    while len(spots) < n:
        r = int(rng.integers(22, 40))
        x, y = (int(v) for v in rng.integers(r + 4, SIZE - r - 4, 2))
        if all((x - a) ** 2 + (y - b) ** 2 > (r + c + 8) ** 2 for a, b, c in spots):
            spots.append((x, y, r))
    return spots


def _paint(d: ImageDraw.ImageDraw, items: list[Item], word: str | None, fills: list, word_fill) -> None:
    """Draw the items (item i in fills[i]) and the word (in word_fill): the picture and its region map share this."""
    for it, fill in zip(items, fills):
        box = (it.x - it.r, it.y - it.r, it.x + it.r, it.y + it.r)
        if it.shape == "circle":
            d.ellipse(box, fill=fill)
        elif it.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(it.x, it.y - it.r), (it.x - it.r, it.y + it.r), (it.x + it.r, it.y + it.r)], fill=fill)
    if word:
        d.text((SIZE // 2, SIZE - 30), word.upper(), fill=word_fill, anchor="mm", font=ImageFont.load_default(36))


def _draw(items: list[Item], background: tuple[int, int, int], word: str | None) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), background)
    _paint(ImageDraw.Draw(im), items, word, [COLOURS[it.colour] for it in items], (0, 0, 0))
    return im


def patch_regions(regions: np.ndarray, grid: int, min_cover: float = 0.2) -> np.ndarray:
    """(grid * grid,) region id per patch, row-major: the id covering most of the patch when it covers at least
    `min_cover` of it, else 0 (background). `regions` is a (SIZE, SIZE) map of region ids, 0 = background."""
    side = regions.shape[0] // grid
    blocks = regions[: side * grid, : side * grid].reshape(grid, side, grid, side).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid * grid, side * side)
    counts = np.stack([(blocks == k).sum(1) for k in range(int(regions.max()) + 1)], axis=1)  # (P, ids)
    counts[:, 0] = 0
    best = counts.argmax(1)
    return np.where(counts[np.arange(len(best)), best] >= min_cover * side * side, best, 0)


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
    return SceneExample(_draw(items, background, word), question, answer, kind, tuple(items), word)


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


PROMPT_SUFFIX = " Answer with a word or two."
TURN_SEED_STREAM = 30  # the extra questions of a record draw from a stream of their own


def _turns(ex: Example, split: str, index: int, turns: int) -> tuple[list[dict], list[str]]:
    """The record's conversation (its own question first, then turns - 1 more) and each question's type."""
    rng = np.random.default_rng([SPLITS[split] + TURN_SEED_STREAM, index])
    asked = [(ex.question, ex.answer, ex.kind), *ex.more_questions(rng, turns - 1)]
    conv = []
    for i, (q, a, _) in enumerate(asked):
        conv += [{"from": "human", "value": f"{'<image>' + chr(10) if i == 0 else ''}{q}{PROMPT_SUFFIX}"},
                 {"from": "gpt", "value": a}]
    return conv, [kind for _, _, kind in asked]


def write_split(out: str | Path, split: str, n: int, start: int = 0, make: MakeExample = make_example,
                turns: int = 1) -> Path:
    """Write n examples as PNG files and a LLaVA-format JSONL (`{split}.jsonl`) into `out`.

    `make(split, index)` draws each example (scenes by default), so every source shares one record format.
    `turns` > 1 adds further questions about the same image as more human/gpt pairs of the record (the record's
    `kind` is that of its first question); training packs them so that one pass over the image serves them all.
    """
    if turns < 1:
        raise InputError(f"turns must be at least 1, got {turns}")
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, start + n):
        ex = make(split, i)
        rel = f"{split}/{i:06d}.png"
        tmp = out / f"{rel}.part"
        ex.image.save(tmp, format="PNG")
        os.replace(tmp, out / rel)
        conversation, kinds = _turns(ex, split, i, turns)
        lines.append(json.dumps({"id": f"{split}-{i}", "image": rel, "kind": ex.kind, "kinds": kinds,
                                 "conversations": conversation}))
    path = out / f"{split}.jsonl"
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
