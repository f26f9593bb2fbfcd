"""Mosaics of Fashion-MNIST items: real (if small) photographed objects at known places, exact answers.

A mosaic is a 2x2 grid of cells, some empty, each other cell holding one clothing item drawn dark on a light
background. Questions ask what is in a cell, where a (unique) item is, or how many items of a class there are
(zero to four); the answer is drawn first, uniformly among the type's answers, and the mosaic laid out to match.
Items come from the Debian package `dataset-fashion-mnist`; splits never share an item: `train` and `val` use
disjoint ranges of Fashion-MNIST's training part and `test` uses its test part. Examples are seeded per
(split, index) like the scenes, on a seed stream of their own.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from atp_cli.data.scenes import NUMBERS, SIZE, SPLITS, Example, check_answer, patch_regions
from atp_cli.errors import InputError

APT_PACKAGE = "dataset-fashion-mnist"
DATA_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
ENV_DIR = "ATP_FASHION_MNIST"  # a folder with the four idx files, searched before DATA_DIRS
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
PART = {"train": "train", "val": "train", "test": "test"}  # the Fashion-MNIST part each split draws from
VAL_FRACTION = 6  # val uses the last 1/6 of the training part (10,000 of 60,000 items)
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell index = row * 2 + column
CELL = SIZE // 2
SEED_STREAM = 10  # added to the split's seed so mosaics never reuse a scene's random stream


@dataclass(frozen=True)
class Garment:
    name: str  # the answer
    noun: str  # singular, in questions ("Where is the pair of trousers?")
    plural: str  # in count questions


CLASSES = (Garment("t-shirt", "t-shirt", "t-shirts"), Garment("trousers", "pair of trousers", "pairs of trousers"),
           Garment("pullover", "pullover", "pullovers"), Garment("dress", "dress", "dresses"),
           Garment("coat", "coat", "coats"), Garment("sandal", "sandal", "sandals"),
           Garment("shirt", "shirt", "shirts"), Garment("sneaker", "sneaker", "sneakers"),
           Garment("bag", "bag", "bags"), Garment("ankle boot", "ankle boot", "ankle boots"))


# every type's answers, each equally likely (the what-type's answer is its target's class, drawn uniformly)
ANSWERS: dict[str, tuple[str, ...]] = {"fashion_what": tuple(g.name for g in CLASSES), "fashion_where": POSITIONS,
                                       "fashion_count": NUMBERS[:len(POSITIONS) + 1]}
QUESTION_TYPES = tuple(ANSWERS)


@dataclass(frozen=True)
class Cell:
    label: int  # index into CLASSES
    item: int  # index into the Fashion-MNIST part the split draws from


@dataclass(frozen=True)
class MosaicExample(Example):
    cells: tuple[Cell | None, ...] = ()  # by POSITIONS; None: an empty cell. Kept so answers can be checked.
    # (SIZE, SIZE): cell index + 1 where the cell's item is inked, 0 elsewhere
    regions: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def objects(self) -> int:
        """The filled cells."""
        return sum(c is not None for c in self.cells)

    def patch_words(self, grid: int) -> list[tuple[str, ...]] | None:
        """Per patch (row-major), the item's name and its cell's position words, or ("background",)."""
        if self.regions is None:
            return None
        words = [("background",)] + [(CLASSES[c.label].name, *POSITIONS[p].split()) if c else ("background",)
                                     for p, c in enumerate(self.cells)]
        return [words[k] for k in patch_regions(self.regions, grid)]

    def _draw_question(self, rng: np.random.Generator) -> tuple[str, str, str]:
        """A question of a random type about a random item of this mosaic (`where` only of an item seen once)."""
        filled = [p for p, c in enumerate(self.cells) if c is not None]
        labels = [self.cells[p].label for p in filled]
        unique = [p for p in filled if labels.count(self.cells[p].label) == 1]
        kinds = [k for k in QUESTION_TYPES if k != "fashion_where" or unique]
        kind = kinds[int(rng.integers(len(kinds)))]
        targets = unique if kind == "fashion_where" else filled
        return (*_ask(kind, self.cells, targets[int(rng.integers(len(targets)))]), kind)


Part = tuple[np.ndarray, np.ndarray]  # images uint8 [N, 28, 28], labels uint8 [N]
Loader = Callable[[str], Part]


# --- reading Fashion-MNIST --------------------------------------------------------------------------------------

def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (big-endian header, unsigned bytes) as an array; gzip-compressed when it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise InputError(f"{path} is not an idx file of unsigned bytes with {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if len(raw) - header != int(np.prod(shape)):
        raise InputError(f"{path} holds {len(raw) - header} bytes of data, its header says {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _data_dirs(root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    env = os.environ.get(ENV_DIR)
    return ([Path(env)] if env else []) + list(DATA_DIRS)


def _find(dirs: list[Path], stem: str) -> Path | None:
    return next((d / name for d in dirs for name in (f"{stem}.gz", stem) if (d / name).is_file()), None)


def load_fashion_mnist(part: str, root: str | Path | None = None) -> Part:
    """Images (uint8 [N, 28, 28], white item on black) and labels (uint8 [N]) of Fashion-MNIST's `part`.

    Looks in `root`, else in $ATP_FASHION_MNIST and where the Debian package puts the files.
    """
    if part not in FILES:
        raise InputError(f"Fashion-MNIST part must be one of {list(FILES)}, got {part!r}")
    dirs = _data_dirs(root)
    paths = [_find(dirs, stem) for stem in FILES[part]]
    if None in paths:
        where = ", ".join(str(d) for d in dirs)
        raise InputError(f"Fashion-MNIST {part} files ({' and '.join(f'{s}[.gz]' for s in FILES[part])}) not found in {where}; "
                         f"install the Debian package with `apt-get install {APT_PACKAGE}` "
                         f"or set {ENV_DIR} to a folder that holds them")
    images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) >= len(CLASSES):
        raise InputError(f"{paths[0]} and {paths[1]} do not hold matching 28x28 images and labels 0-9")
    return images, labels


# --- the item source (replaceable, for tests or other item sets) ------------------------------------------------

_loader: Loader = load_fashion_mnist
_parts: dict[str, Part] = {}
_pools: dict[str, list[np.ndarray]] = {}


def set_loader(loader: Loader | None) -> None:
    """Draw items from `loader(part)` from now on (None: the Debian package's files); forgets loaded items."""
    global _loader
    _loader = loader or load_fashion_mnist
    _parts.clear()
    _pools.clear()


def _part(name: str) -> Part:
    if name not in _parts:
        _parts[name] = _loader(name)
    return _parts[name]


def item_range(split: str, n_items: int) -> range:
    """Indices into the split's part that the split may use: train and val split the training part."""
    if split == "test":
        return range(n_items)
    first_val = n_items - n_items // VAL_FRACTION
    return range(first_val) if split == "train" else range(first_val, n_items)


def _pool(split: str) -> list[np.ndarray]:
    """Per class, the item indices the split may draw."""
    if split not in _pools:
        labels = _part(PART[split])[1]
        span = item_range(split, len(labels))
        pools = [np.flatnonzero(labels[span.start:span.stop] == c) + span.start for c in range(len(CLASSES))]
        empty = [CLASSES[c].name for c, pool in enumerate(pools) if not len(pool)]
        if empty:
            raise InputError(f"no Fashion-MNIST items of class {', '.join(empty)} for the {split} split")
        _pools[split] = pools
    return _pools[split]


# --- layout, drawing, questions ---------------------------------------------------------------------------------

def _labels(rng: np.random.Generator, kind: str, n: int, copies: int, target: int) -> list[int]:
    """n class labels to place, the target's copies first: `what` places the target once and may repeat it, `where`
    places it once and never again, `count` places exactly `copies` of it."""
    if kind == "fashion_what":
        return [target] + [int(c) for c in rng.integers(len(CLASSES), size=n - 1)]
    others = [c for c in range(len(CLASSES)) if c != target]
    return [target] * copies + [others[int(i)] for i in rng.integers(len(others), size=n - copies)]


def _layout(rng: np.random.Generator, split: str, kind: str, answer: str
            ) -> tuple[tuple[Cell | None, ...], int, int]:
    """Cells by POSITIONS, the target's position and class, built around the drawn answer: `where` puts the target
    at the answer's position, `count` places the answer's number of copies (zero to four)."""
    copies = NUMBERS.index(answer) if kind == "fashion_count" else 1
    names = [g.name for g in CLASSES]
    target = names.index(answer) if kind == "fashion_what" else int(rng.integers(len(CLASSES)))
    n = int(rng.integers(max(copies, 1), len(POSITIONS) + 1))
    order = [int(p) for p in rng.permutation(len(POSITIONS))]
    if kind == "fashion_where":
        order.remove(POSITIONS.index(answer))
        order.insert(0, POSITIONS.index(answer))
    pools = _pool(split)
    cells: list[Cell | None] = [None] * len(POSITIONS)
    for pos, label in zip(order, _labels(rng, kind, n, copies, target)):
        cells[pos] = Cell(label, int(pools[label][int(rng.integers(len(pools[label])))]))
    return tuple(cells), order[0], target


INK_REGION = 0.25  # item alpha from which a pixel counts as the item's in the region map


def _draw(rng: np.random.Generator, cells: tuple[Cell | None, ...], images: np.ndarray
          ) -> tuple[Image.Image, np.ndarray]:
    """Light background, each item scaled to 120-150 px at a random spot in its cell, inked in a dark colour;
    also the region map (cell index + 1 where the item's ink is, 0 elsewhere)."""
    background = rng.integers(215, 256, 3).astype(np.float32)
    canvas = np.broadcast_to(background, (SIZE, SIZE, 3)).copy()
    regions = np.zeros((SIZE, SIZE), np.uint8)
    for pos, cell in enumerate(cells):
        if cell is None:
            continue
        side = int(rng.integers(120, 151))
        x0, y0 = (int(v) for v in rng.integers(0, CELL - side + 1, 2))
        ink = rng.integers(0, 90, 3).astype(np.float32)
        item = Image.fromarray(images[cell.item]).resize((side, side), Image.Resampling.BILINEAR)
        alpha = np.asarray(item, np.float32)[..., None] / 255.0
        top, left = (pos // 2) * CELL + y0, (pos % 2) * CELL + x0
        region = canvas[top:top + side, left:left + side]
        region[:] = region * (1.0 - alpha) + ink * alpha
        regions[top:top + side, left:left + side][alpha[..., 0] >= INK_REGION] = pos + 1
    return Image.fromarray(np.rint(canvas).astype(np.uint8)), regions


def _ask(kind: str, cells: tuple[Cell | None, ...], target: int, label: int | None = None) -> tuple[str, str]:
    """The question about the item at `target` (for counts: about class `label`, default the target's)."""
    if kind == "fashion_count":
        label = cells[target].label if label is None else label
        count = sum(c is not None and c.label == label for c in cells)
        return f"How many {CLASSES[label].plural} are there?", NUMBERS[count]
    garment = CLASSES[cells[target].label]
    if kind == "fashion_what":
        return f"What item is in the {POSITIONS[target]}?", garment.name
    return f"Where is the {garment.noun}?", POSITIONS[target]


def make_example(split: str, index: int, kind: str | None = None, answer: str | None = None) -> MosaicExample:
    """The mosaic example `index` of `split` whose answer is `answer` (default: drawn uniformly among the type's
    answers, ANSWERS) laid out to match. The same arguments always give the same example."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if kind is not None and kind not in QUESTION_TYPES:
        raise InputError(f"mosaic question type must be one of {list(QUESTION_TYPES)}, got {kind!r}")
    rng = np.random.default_rng([SPLITS[split] + SEED_STREAM, index])
    kind = kind or QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
    drawn = ANSWERS[kind][int(rng.integers(len(ANSWERS[kind])))]
    answer = check_answer(ANSWERS, kind, answer) or drawn
    cells, target, label = _layout(rng, split, kind, answer)
    image, regions = _draw(rng, cells, _part(PART[split])[0])
    question, answer = _ask(kind, cells, target, label)
    return MosaicExample(image, question, answer, kind, cells, regions)
