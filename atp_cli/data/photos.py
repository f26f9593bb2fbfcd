"""A few real photos for demos, from the images that ship inside scikit-image (nothing is downloaded).

The generated scenes and mosaics have exact answers but look nothing like photographs; these give a quick look
at how a model and a pruning strategy behave on natural images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from atp_cli.errors import InputError

# only images whose files are inside the scikit-image package (others are fetched from the network on first use)
PHOTOS: tuple[str, ...] = ("astronaut", "camera", "chelsea", "coffee", "coins", "horse", "hubble_deep_field",
                           "moon", "rocket")


def photo(name: str) -> Image.Image:
    """The photo `name` (one of PHOTOS) as an RGB image; grey and black-and-white ones are expanded to RGB."""
    if name not in PHOTOS:
        raise InputError(f"unknown photo {name!r}; choose one of {', '.join(PHOTOS)}")
    try:
        from skimage import data
    except ImportError as e:
        raise InputError("the demo photos need scikit-image: pip install scikit-image") from e
    pixels = np.asarray(getattr(data, name)())
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return Image.fromarray(pixels).convert("RGB")


def write_photos(out_dir: str | Path) -> list[Path]:
    """Write every photo as `{name}.png` into `out_dir`; each file appears whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = out_dir / f"{name}.png"
        tmp = path.with_name(path.name + ".part")
        photo(name).save(tmp, format="PNG")
        os.replace(tmp, path)
        paths.append(path)
    return paths
