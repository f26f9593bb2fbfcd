"""Images in: any file PIL reads -> RGB, and the letterbox preprocessing llama.cpp's mtmd applies.

Training must see the pixels inference sees: mtmd resizes (bicubic) into an S x S canvas filled with
(122, 116, 104), centred, then normalises with the mmproj's mean and std.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from atp_cli.errors import InputError

PAD_COLOUR = (122, 116, 104)
MAX_PIXELS = 64_000_000


def load_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """An RGB image from a path, encoded bytes or a PIL image (grayscale, RGBA, CMYK, palette all accepted)."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
        except FileNotFoundError as e:
            raise InputError(f"image not found: {source}") from e
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            raise InputError(f"cannot read {source!r}: {e}") from e
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"image of {image.width}x{image.height} pixels is larger than {MAX_PIXELS} pixels")
            image.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            name = "the given bytes" if isinstance(source, bytes) else str(source)
            raise InputError(f"cannot read {name} as an image: {e}") from e
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows the image: EXIF orientation applied, transparency over white, 16-bit and
    floating-point grey scaled into 0..255 (PIL's own conversion clips them, so a 16-bit PNG would turn white)."""
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: keep the pixels as stored
        pass
    if image.mode in _WIDE_GREY:
        image = Image.fromarray(_grey_to_uint8(np.asarray(image)), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


_WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integer grey of 16 bits (or 32 bits holding 16-bit values) scaled by 255/65535; floats in [0, 1] by 255;
    any other range stretched onto 0..255."""
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if values.dtype.kind in "iu" and lo >= 0 and hi <= 65535:
        scaled = v * (255.0 / 65535.0)
    elif values.dtype.kind == "f" and lo >= 0 and hi <= 1:
        scaled = v * 255.0
    else:
        scaled = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(v)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """mtmd's fixed-size preprocessing: fit inside size x size (bicubic), centre on the pad colour."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = min(size / w, size / h)
    nw, nh = min(math.ceil(w * scale), size), min(math.ceil(h * scale), size)
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    canvas.paste(image.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def pixel_values(image: Image.Image, size: int, mean, std) -> np.ndarray:
    """(3, size, size) float32, normalised."""
    x = np.asarray(letterbox(image, size), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
