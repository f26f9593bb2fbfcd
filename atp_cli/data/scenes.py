"""Rendered scenes: shapes of known colours at known places, questions whose answers are exact and balanced.

Each example is drawn from its own seed (split, index), so splits are fixed, reproducible and disjoint by
construction: `train`, `val` and `test` use different seed streams and the test split is never used to tune.

Answers are drawn first and the scene is built to match, so within every question type each answer in
`ANSWERS[type]` is equally likely and a model that does not look scores chance (`chance`). Types that need one
region: the colour of a named shape, the colour / shape in a named quadrant, where a named shape is, the written
word. Types that need the whole image: counts by colour or by shape (zero to four), whether a shape exists.
Relations: is one shape left of another. Every shape lies inside one quadrant, so quadrant words are never
ambiguous, and at most two shapes share a quadrant.
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
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # index = row * 2 + column
MAX_COUNT = 4  # count answers are zero..MAX_COUNT
MAX_ITEMS = 6
PER_QUADRANT = 2
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS), "colour_at": tuple(COLOURS), "shape_at": SHAPES, "position": QUADRANTS,
    "text": WORDS, "count_colour": NUMBERS[:MAX_COUNT + 1], "count_shape": NUMBERS[:MAX_COUNT + 1],
    "exists": ("yes", "no"), "relation": ("yes", "no")}
QUESTION_TYPES = tuple(ANSWERS)
MIN_GAP = 30  # px between the centres of two shapes in a left/right question, so the answer is visible


def chance(answers: dict[str, tuple[str, ...]], kind: str) -> float:
    """Accuracy of a uniform guess among the type's answers: what a model that ignores the image can reach."""
    return 1.0 / len(answers[kind])


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

    @property
    def objects(self) -> int | None:
        """How many things the image shows (a curriculum's measure of difficulty); None where unknown."""
        return None

    def more_questions(self, rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
        """Up to n further (question, answer, kind) about the same image, none asked twice (nor the example's own);
        none unless the source knows the image's content (`_draw_question`)."""
        asked, out = {self.question}, []
        for _ in range(10 * n):  # small scenes have few distinct questions: stop trying after a while
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

    @property
    def objects(self) -> int:
        """The shapes, and the word when one is written."""
        return len(self.items) + (self.word is not None)

    def patch_words(self, grid: int) -> list[tuple[str, ...]]:
        """Per patch of a grid x grid tiling (row-major), the words that describe what covers it: colour, shape and
        quadrant of a shape, the written word, or ("background",)."""
        regions = Image.new("L", (SIZE, SIZE), 0)
        _paint(ImageDraw.Draw(regions), list(self.items), self.word, list(range(1, len(self.items) + 1)),
               len(self.items) + 1)
        words = [("background",)] + [(it.colour, it.shape, *_quadrant(it).split()) for it in self.items]
        words.append((self.word or "background",))
        return [words[k] for k in patch_regions(np.asarray(regions), grid)]

    def _draw_question(self, rng: np.random.Generator) -> tuple[str, str, str] | None:
        """A further question of a random type about what this scene holds (None when the type has none here)."""
        kind = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
        asked = _question_about(kind, list(self.items), self.word, rng)
        return None if asked is None else (*asked, kind)


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _quadrant_index(it: Item) -> int:
    return 2 * (it.y >= SIZE // 2) + (it.x >= SIZE // 2)


def _quadrant(it: Item) -> str:
    return QUADRANTS[_quadrant_index(it)]


def _unique(items: list[Item], it: Item) -> bool:
    """No other item has the same colour and shape, so "the red circle" names one item."""
    return sum((o.shape, o.colour) == (it.shape, it.colour) for o in items) == 1


def _question_about(kind: str, items: list[Item], word: str | None, rng: np.random.Generator
                    ) -> tuple[str, str] | None:
    """A question of `kind` that this scene answers exactly, about a random target; None if it has no target.

    Used for the extra turns of a record; the first question of a record comes from `_build`, which draws the
    answer first instead."""
    by_quadrant = [[it for it in items if _quadrant_index(it) == q] for q in range(4)]
    if kind == "colour":
        alone = [s for s in SHAPES if sum(it.shape == s for it in items) == 1]
        if not alone:
            return None
        shape = _pick(rng, alone)
        return _ask_colour(next(it for it in items if it.shape == shape))
    if kind in ("colour_at", "shape_at"):
        alone = [q for q in range(4) if len(by_quadrant[q]) == 1]
        return None if not alone else _ask_at(kind, by_quadrant[_pick(rng, alone)][0])
    if kind == "position":
        unique = [it for it in items if _unique(items, it)]
        return None if not unique else _ask_position(_pick(rng, unique))
    if kind == "count_colour":
        colour = _pick(rng, list(COLOURS))
        return _ask_count_colour(colour, sum(it.colour == colour for it in items))
    if kind == "count_shape":
        shape = _pick(rng, list(SHAPES))
        return _ask_count_shape(shape, sum(it.shape == shape for it in items))
    if kind == "exists":
        present = {(it.shape, it.colour) for it in items}
        absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
        pool = sorted(present) if rng.random() < 0.5 or not absent else absent
        shape, colour = _pick(rng, pool)
        return _ask_exists(shape, colour, (shape, colour) in present)
    if kind == "relation":
        pairs = [(a, b) for a in items for b in items if a is not b and _unique(items, a) and _unique(items, b)
                 and abs(a.x - b.x) >= MIN_GAP]
        return None if not pairs else _ask_relation(*_pick(rng, pairs))
    if kind == "text":
        return None if word is None else _ask_text(word)
    raise InputError(f"unknown question type {kind!r}")


def _ask_colour(target: Item) -> tuple[str, str]:
    return f"What colour is the {target.shape}?", target.colour


def _ask_at(kind: str, target: Item) -> tuple[str, str]:
    if kind == "colour_at":
        return f"What colour is the shape in the {_quadrant(target)}?", target.colour
    return f"What shape is in the {_quadrant(target)}?", target.shape


def _ask_position(target: Item) -> tuple[str, str]:
    return f"Where is the {target.colour} {target.shape}?", _quadrant(target)


def _ask_count_colour(colour: str, count: int) -> tuple[str, str]:
    return f"How many {colour} shapes are there?", NUMBERS[count]


def _ask_count_shape(shape: str, count: int) -> tuple[str, str]:
    return f"How many {shape}s are there?", NUMBERS[count]


def _ask_exists(shape: str, colour: str, present: bool) -> tuple[str, str]:
    return f"Is there a {colour} {shape}?", "yes" if present else "no"


def _ask_relation(a: Item, b: Item) -> tuple[str, str]:
    return f"Is the {a.colour} {a.shape} left of the {b.colour} {b.shape}?", "yes" if a.x < b.x else "no"


def _ask_text(word: str) -> tuple[str, str]:
    return "What word is written in the image?", word


# --- building a scene around a drawn answer ----------------------------------------------------------------------

Wanted = tuple[str, str, int | None]  # shape, colour, quadrant (None: any quadrant with room)


def _fill(rng: np.random.Generator, n: int, allowed: Callable[[str, str], bool]) -> list[Wanted]:
    """n distractors of random (shape, colour) among those `allowed`, in any quadrant."""
    combos = [(s, c) for s in SHAPES for c in COLOURS if allowed(s, c)]
    return [(*_pick(rng, combos), None) for _ in range(n)]


def _place(rng: np.random.Generator, wanted: list[Wanted], free: list[int]) -> list[Item]:
    """Items for `wanted`, each wholly inside its quadrant (a free one in a quadrant of `free` with room), at most
    PER_QUADRANT to a quadrant, never overlapping."""
    load = [sum(q == k for _, _, q in wanted) for k in range(4)]
    items: list[Item] = []
    for shape, colour, quadrant in wanted:
        if quadrant is None:
            quadrant = _pick(rng, [k for k in free if load[k] < PER_QUADRANT])
            load[quadrant] += 1
        x0, y0 = (quadrant % 2) * (SIZE // 2), (quadrant // 2) * (SIZE // 2)
        while True:  # two shapes of radius <= 34 always fit in a 168 px quadrant, so this ends quickly
            r = int(rng.integers(20, 35))
            x, y = (int(v) for v in rng.integers(r + 4, SIZE // 2 - r - 4, 2))
            x, y = x + x0, y + y0
            if all((x - o.x) ** 2 + (y - o.y) ** 2 > (r + o.r + 8) ** 2 for o in items):
                break
        items.append(Item(shape, colour, x, y, r))
    return items


def _build(kind: str, answer: str, rng: np.random.Generator) -> tuple[list[Item], str | None, tuple[str, str]]:
    """A scene whose answer to a `kind` question is `answer`: the items, the written word and (question, answer)."""
    all_quadrants = [0, 1, 2, 3]
    if kind == "colour":
        shape = _pick(rng, list(SHAPES))
        wanted = [(shape, answer, None)] + _fill(rng, int(rng.integers(1, 4)), lambda s, c: s != shape)
        items = _place(rng, wanted, all_quadrants)
        return items, None, _ask_colour(items[0])
    if kind in ("colour_at", "shape_at"):
        quadrant = int(rng.integers(4))
        target = (answer, _pick(rng, list(COLOURS))) if kind == "shape_at" else (_pick(rng, list(SHAPES)), answer)
        others = [q for q in all_quadrants if q != quadrant]
        items = _place(rng, [(*target, quadrant)] + _fill(rng, int(rng.integers(1, 4)), lambda s, c: True), others)
        return items, None, _ask_at(kind, items[0])
    if kind == "position":
        shape, colour = _pick(rng, list(SHAPES)), _pick(rng, list(COLOURS))
        wanted = [(shape, colour, QUADRANTS.index(answer))]
        wanted += _fill(rng, int(rng.integers(1, 4)), lambda s, c: (s, c) != (shape, colour))
        items = _place(rng, wanted, all_quadrants)
        return items, None, _ask_position(items[0])
    if kind in ("count_colour", "count_shape"):
        count = NUMBERS.index(answer)
        named = _pick(rng, list(COLOURS) if kind == "count_colour" else list(SHAPES))
        hits = [(named, c) if kind == "count_shape" else (s, named)
                for s, c in ((_pick(rng, list(SHAPES)), _pick(rng, list(COLOURS))) for _ in range(count))]
        rest = int(rng.integers(max(0, 1 - count), MAX_ITEMS - count + 1))
        misses = _fill(rng, rest, lambda s, c: (c if kind == "count_colour" else s) != named)
        items = _place(rng, [(s, c, None) for s, c in hits] + misses, all_quadrants)
        ask = _ask_count_colour if kind == "count_colour" else _ask_count_shape
        return items, None, ask(named, count)
    if kind == "exists":
        shape, colour = _pick(rng, list(SHAPES)), _pick(rng, list(COLOURS))
        present = answer == "yes"
        wanted = [(shape, colour, None)] if present else []
        wanted += _fill(rng, int(rng.integers(1, 5)), lambda s, c: (s, c) != (shape, colour))
        return _place(rng, wanted, all_quadrants), None, _ask_exists(shape, colour, present)
    if kind == "relation":
        while True:  # until the two named shapes are far enough apart to tell left from right
            (sa, ca), (sb, cb) = rng.choice([(s, c) for s in SHAPES for c in COLOURS], 2, replace=False)
            wanted = [(sa, ca, None), (sb, cb, None)]
            wanted += _fill(rng, int(rng.integers(0, 3)), lambda s, c: (s, c) not in {(sa, ca), (sb, cb)})
            items = _place(rng, wanted, all_quadrants)
            if abs(items[0].x - items[1].x) >= MIN_GAP:
                break
        a, b = items[0], items[1]
        if (a.x < b.x) != (answer == "yes"):  # swap where the two stand, so the answer is the one drawn
            a, b = Item(a.shape, a.colour, b.x, b.y, b.r), Item(b.shape, b.colour, a.x, a.y, a.r)
            items[:2] = [a, b]
        return items, None, _ask_relation(a, b)
    if kind == "text":
        items = _place(rng, _fill(rng, int(rng.integers(1, 4)), lambda s, c: True), [0, 1])  # the word is below
        return items, answer, _ask_text(answer)
    raise InputError(f"scene question type must be one of {list(QUESTION_TYPES)}, got {kind!r}")


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
        d.text((SIZE // 2, SIZE - 60), word.upper(), fill=word_fill, anchor="mm", font=ImageFont.load_default(48))


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


def check_answer(answers: dict[str, tuple[str, ...]], kind: str, answer: str | None) -> str | None:
    """`answer` if it is one of the type's answers (None passes through: the caller draws one)."""
    if answer is not None and answer not in answers[kind]:
        raise InputError(f"{answer!r} is not an answer of question type {kind!r}; those are {list(answers[kind])}")
    return answer


def make_example(split: str, index: int, kind: str | None = None, answer: str | None = None) -> Example:
    """Scene example `index` of `split` (of type `kind`, else a uniformly drawn type) whose answer is `answer`
    (default: drawn uniformly among the type's answers) with the scene built to match. The same arguments always
    give the same example."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if kind is not None and kind not in ANSWERS:
        raise InputError(f"scene question type must be one of {list(QUESTION_TYPES)}, got {kind!r}")
    rng = np.random.default_rng([SPLITS[split], index])
    kind = kind or _pick(rng, list(QUESTION_TYPES))
    answer = check_answer(ANSWERS, kind, answer) or _pick(rng, list(ANSWERS[kind]))
    items, word, (question, answer) = _build(kind, answer, rng)
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    return SceneExample(_draw(items, background, word), question, answer, kind, tuple(items), word)


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
        record = {"id": f"{split}-{i}", "image": rel, "kind": ex.kind, "kinds": kinds, "conversations": conversation}
        if ex.objects is not None:
            record["objects"] = ex.objects
        lines.append(json.dumps(record))
    path = out / f"{split}.jsonl"
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
