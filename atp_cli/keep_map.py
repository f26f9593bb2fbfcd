"""A picture of what each module kept: one panel per module, dropped patches dimmed, over the model's input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from atp_cli.files import atomic_path
from atp_cli.image_input import letterbox

PANEL = 336


def draw_keep_map(image: Image.Image, kept_raster: list[np.ndarray], grid: tuple[int, int], path: str | Path,
                  labels: list[str] | None = None) -> Path:
    """Write a PNG (atomically): the input image, then one panel per module with its kept tokens."""
    base = letterbox(image, PANEL)
    h, w = grid
    panels = [base]
    for kept in kept_raster:
        mask = np.zeros(h * w, bool)
        mask[np.asarray(kept, dtype=int)] = True
        cell = np.kron(mask.reshape(h, w), np.ones((PANEL // h + 1, PANEL // w + 1), bool))[:PANEL, :PANEL]
        arr = np.asarray(base, np.float32)
        arr[~cell] *= 0.2
        panels.append(Image.fromarray(arr.astype(np.uint8)))
    canvas = Image.new("RGB", (PANEL * len(panels), PANEL + 18), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    names = ["input", *(labels or [f"module {i + 1}: {len(k)} kept" for i, k in enumerate(kept_raster)])]
    for i, (panel, name) in enumerate(zip(panels, names)):
        canvas.paste(panel, (i * PANEL, 18))
        draw.text((i * PANEL + 4, 3), name, fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
