"""Projected image rows kept for images seen recently, so that a second question about the same image, a strategy
switch or the next strategy of a benchmark does not run the vision tower again.

Keyed by the image's content (its RGB pixels and size, hashed), not by its path or object, and bounded in bytes
(least recently used rows go first). Rows are returned read-only: a caller that changes them would change them for
every later question.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
from PIL import Image

from atp_cli.errors import InputError

DEFAULT_BYTES = 64 * 2**20  # 64 MiB: 28 images of LLaVA-1.5-7B (576 x 4096 float32 rows = 9 MiB each)


def image_key(image: Image.Image) -> str:
    """The content key of an (RGB) image."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """An LRU map from image content to its projected rows, holding at most `max_bytes` of rows (0: off)."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        if max_bytes < 0:
            raise InputError(f"the embedding cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bytes = 0  # of the rows held
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> np.ndarray | None:
        rows = self._rows.get(key)
        if rows is None:
            self.misses += 1
            return None
        self._rows.move_to_end(key)
        self.hits += 1
        return rows

    def put(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Keep `rows` (as a read-only copy) unless they alone exceed the bound; returns what callers should use."""
        rows = np.array(rows, copy=True)
        rows.setflags(write=False)
        if rows.nbytes > self.max_bytes:
            return rows
        old = self._rows.pop(key, None)
        self.bytes += rows.nbytes - (old.nbytes if old is not None else 0)
        self._rows[key] = rows
        while self.bytes > self.max_bytes:
            self.bytes -= self._rows.popitem(last=False)[1].nbytes
        return rows

    def clear(self) -> None:
        self._rows.clear()
        self.bytes = 0
