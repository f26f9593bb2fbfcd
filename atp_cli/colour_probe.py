"""A vision encoder with no weights at all, for `atp demo`: image patches -> colour-word embeddings.

It exercises the whole native pruning path with nothing but the packaged language model (no tower, no projector,
no mmproj): the image is cut into a grid of patches, each patch is named by its nearest colour, and the patch
becomes the language model's own input embedding of that colour word. The language model then receives one visual
embedding row per patch through the same path as a LLaVA projector's output, and the pruning between
decoder segments acts on those rows.
"""

from __future__ import annotations

import gguf
import numpy as np
from PIL import Image

from atp_cli.errors import InputError, ModelError
from atp_cli.runtime.model import LlamaModel

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (240, 220, 50),
    "orange": (245, 140, 30),
    "purple": (130, 50, 160),
    "pink": (245, 160, 200),
    "brown": (125, 80, 40),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}


def patch_colours(image: Image.Image, grid: int = 24) -> list[str]:
    """Nearest palette colour of each patch, in raster order (grid x grid entries)."""
    rgb = np.asarray(image.convert("RGB").resize((grid, grid), Image.Resampling.BOX), dtype=np.float32)
    names = list(PALETTE)
    ref = np.array([PALETTE[n] for n in names], dtype=np.float32)  # (C, 3)
    dist = ((rgb.reshape(-1, 1, 3) - ref[None]) ** 2).sum(-1)  # (grid*grid, C)
    return [names[i] for i in dist.argmin(1)]


class ColourProbe:
    """Maps colour names to the model's input embeddings of those words (read from its GGUF)."""

    def __init__(self, model: LlamaModel) -> None:
        reader = gguf.GGUFReader(model.path)
        table = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if table is None:
            raise ModelError(f"{model.path} has no token_embd.weight")
        self.rows: dict[str, np.ndarray] = {}
        for name in PALETTE:
            ids = model.tokenize(" " + name)
            if ids.size == 0:
                raise ModelError(f"the tokenizer of {model.path} gives no token for {name!r}")
            raw = np.asarray(table.data[ids[:1]])
            self.rows[name] = gguf.quants.dequantize(raw, table.tensor_type).reshape(-1)[: model.n_embd]

    def encode(self, image: Image.Image, grid: int = 24) -> np.ndarray:
        """(grid*grid, n_embd) visual embedding rows, raster order."""
        if grid < 2:
            raise InputError("grid must be at least 2")
        return np.stack([self.rows[c] for c in patch_colours(image, grid)]).astype(np.float32)
