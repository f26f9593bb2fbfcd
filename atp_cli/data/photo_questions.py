"""Real photographs asked the generated sources' questions, each answered "I don't know".

A model trained on rendered scenes and mosaics alone names a colour or a garment for any picture, a photograph of a
horse included, with the same confidence as for a scene. Mixed into training, these examples teach it that a
question about shapes, cells or written words has no answer in a photograph, and to say so.

The photographs are images that ship inside scikit-image and matplotlib (nothing is downloaded), each example a
seeded crop, flip and tint of one of them. The demo photos (`atp_cli.data.photos.PHOTOS`) are never used, so they
stay a held-out check of the behaviour. Splits differ in their seeds and in which of the 200 small face photos they
may use (train the first 160, val the next 20, test the last 20); the other photos are shared, cropped differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from atp_cli.data import mosaics, scenes
from atp_cli.data.scenes import SIZE, SPLITS, Example, check_answer
from atp_cli.errors import InputError

KIND = "photo"
ANSWER = "I don't know"
ANSWERS: dict[str, tuple[str, ...]] = {KIND: (ANSWER,)}
SEED_STREAM = 40  # added to the split's seed (scenes 0, mosaics 10, the mixed draw 20, extra turns 30)
# scikit-image files of natural (or at least non-synthetic) content; not the demo photos, nor images of printed text
# or geometric shapes, whose questions could have an answer
SKIMAGE_FILES = ("brick.png", "cell.png", "clock_motion.png", "grass.png", "gravel.png", "ihc.png",
                 "microaneurysms.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg")
MATPLOTLIB_FILES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
FACES = "lfw_subset.npy"
FACE_RANGE = {"train": range(0, 160), "val": range(160, 180), "test": range(180, 200)}


def _folders() -> tuple[Path, Path]:
    try:
        import matplotlib
        import skimage.data
    except ImportError as e:
        raise InputError("photo questions need scikit-image and matplotlib (pip install scikit-image matplotlib)"
                         ) from e
    return Path(skimage.data.__file__).parent, Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"


@cache
def _photos() -> tuple[Image.Image, ...]:
    """The shared photographs, RGB (read once per process)."""
    skimage_dir, mpl_dir = _folders()
    paths = [skimage_dir / f for f in SKIMAGE_FILES] + [mpl_dir / f for f in MATPLOTLIB_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"photo files missing from the installed packages: {', '.join(missing)}")
    return tuple(Image.open(p).convert("RGB") for p in paths)


@cache
def _faces() -> np.ndarray:
    """(200, 25, 25) uint8 grey face photos."""
    path = _folders()[0] / FACES
    if not path.is_file():
        raise InputError(f"photo file missing from the installed packages: {path}")
    return (np.load(path) * 255).round().astype(np.uint8)


def _base(split: str, rng: np.random.Generator) -> Image.Image:
    """One photograph: a shared one, or (one draw in as many as there are shared ones plus one) a face of the
    split's own range."""
    photos = _photos()
    k = int(rng.integers(len(photos) + 1))
    if k < len(photos):
        return photos[k]
    faces = FACE_RANGE[split]
    return Image.fromarray(_faces()[faces[int(rng.integers(len(faces)))]]).convert("RGB")


def _augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A square crop of 50-100 % of the short side at a random place, maybe mirrored, tinted per channel by
    0.8-1.2, at the scenes' size."""
    w, h = image.size
    side = int(min(w, h) * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
    crop = image.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        crop = ImageOps.mirror(crop)
    tint = rng.uniform(0.8, 1.2, 3)
    pixels = np.clip(np.asarray(crop, np.float64) * tint, 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels)


@dataclass(frozen=True)
class PhotoExample(Example):
    asker: Example | None = None  # the scene or mosaic whose questions the photo is asked

    def _draw_question(self, rng: np.random.Generator) -> tuple[str, str, str] | None:
        asked = self.asker._draw_question(rng) if self.asker is not None else None
        return None if asked is None else (asked[0], ANSWER, KIND)


def make_example(split: str, index: int, kind: str | None = None, answer: str | None = None) -> Example:
    """Photo example `index` of `split`: a photograph and a question of a scene (even indices) or a mosaic (odd
    ones), answered "I don't know". The same arguments always give the same example."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if kind is not None and kind != KIND:
        raise InputError(f"photo question type must be {KIND!r}, got {kind!r}")
    check_answer(ANSWERS, KIND, answer)
    rng = np.random.default_rng([SPLITS[split] + SEED_STREAM, index])
    asker = (scenes if index % 2 == 0 else mosaics).make_example(split, index)
    return PhotoExample(_augment(_base(split, rng), rng), asker.question, ANSWER, KIND, asker)
