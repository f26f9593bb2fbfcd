"""Every PIL mode becomes the RGB a viewer shows, checked by pixel values (through files where the format keeps the
mode, so the path a user takes is the one tested)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from atp_cli.image_input import load_image


def through_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def rgb(source) -> np.ndarray:
    out = load_image(source)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_16_bit_grey_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    data = through_png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # PIL keeps the 16 bits
    out = rgb(data)
    np.testing.assert_array_equal(out[..., 0], np.round(ramp / 257.0).astype(int))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 32  # a ramp, not a white square


def test_32_bit_integer_and_float_grey():
    i32 = Image.fromarray((np.arange(16, dtype=np.int32) * 4369).reshape(4, 4), "I")  # 0 .. 65535
    np.testing.assert_array_equal(rgb(i32)[..., 0].ravel(), np.round(np.arange(16) * 4369 / 257.0))
    f = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), "F")
    np.testing.assert_array_equal(rgb(f)[..., 2].ravel(), np.round(np.linspace(0, 1, 16) * 255))
    wide = Image.fromarray(np.linspace(-5, 5, 16, dtype=np.float32).reshape(4, 4), "F")  # any other range: stretched
    assert rgb(wide)[..., 0].min() == 0 and rgb(wide)[..., 0].max() == 255


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    assert rgb(through_png(pal)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    pal.info["transparency"] = 1  # index 1 transparent: white, as a viewer on white shows it
    assert rgb(through_png(pal)).tolist() == [[[255, 0, 0], [255, 255, 255]]]


@pytest.mark.parametrize("mode,pixel,expected", [
    ("RGBA", (0, 0, 255, 0), (255, 255, 255)),  # fully transparent -> white
    ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
    ("LA", (0, 128), (127, 127, 127)),  # half-transparent black over white
    ("L", 200, (200, 200, 200)),
    ("1", 1, (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("YCbCr", (76, 85, 255), (254, 0, 0)),
])
def test_modes_by_pixel(mode, pixel, expected):
    image = Image.new(mode, (3, 2), pixel)
    out = rgb(image)
    assert np.abs(out - np.array(expected)).max() <= 1, (mode, out[0, 0])


def test_grey_png_with_a_transparent_value():
    grey = Image.fromarray(np.array([[10, 20]], np.uint8), "L")
    grey.info["transparency"] = 20
    assert rgb(through_png(grey)).tolist() == [[[10, 10, 10], [255, 255, 255]]]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    image.save(buf, format="PNG", exif=exif)
    out = rgb(buf.getvalue())
    assert out.shape == (4, 2, 3)  # displayed portrait
    assert tuple(out[0, 1]) == (255, 0, 0)  # the top-left pixel moved to the top-right
