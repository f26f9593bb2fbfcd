"""What the decoder is fed: a prompt as spans of token ids and embedding rows, with their positions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.errors import InputError


@dataclass(frozen=True)
class Span:
    """Consecutive prompt entries of one kind: token ids (text) or embedding rows (an image)."""

    tokens: np.ndarray | None = None  # (n,) int32
    embd: np.ndarray | None = None  # (n, n_embd) float32

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.embd is None):
            raise InputError("a span holds either token ids or embedding rows")
        if len(self) == 0:
            raise InputError("a span must not be empty")

    @property
    def is_visual(self) -> bool:
        return self.embd is not None

    def __len__(self) -> int:
        return len(self.tokens) if self.tokens is not None else len(self.embd)

    @staticmethod
    def text(tokens: np.ndarray | list[int]) -> "Span":
        return Span(tokens=np.asarray(tokens, dtype=np.int32))

    @staticmethod
    def image(embd: np.ndarray) -> "Span":
        embd = np.asarray(embd, dtype=np.float32)
        if embd.ndim != 2:
            raise InputError(f"image embeddings must be 2-D (n_tokens, n_embd), got shape {embd.shape}")
        return Span(embd=embd)


@dataclass(frozen=True)
class Prompt:
    """A whole prompt. Positions are consecutive from `start_pos` unless `positions` is given
    (a pre-LLM pruner keeps the original positions of the visual tokens it keeps)."""

    spans: tuple[Span, ...]
    positions: np.ndarray | None = None
    start_pos: int = 0
    image_origin: int | None = None  # position of raster index 0 of the image; default: its first entry

    def __post_init__(self) -> None:
        if not self.spans:
            raise InputError("empty prompt")
        if sum(s.is_visual for s in self.spans) > 1:
            raise InputError("a prompt holds at most one image span")
        if self.positions is not None:
            pos = np.asarray(self.positions)
            if pos.shape != (len(self),) or (np.diff(pos) <= 0).any() or pos[0] < self.start_pos:
                raise InputError(f"positions must be {len(self)} strictly increasing values >= {self.start_pos}")

    def __len__(self) -> int:
        return sum(len(s) for s in self.spans)

    def all_positions(self) -> np.ndarray:
        if self.positions is not None:
            return np.asarray(self.positions, dtype=np.int32)
        return np.arange(self.start_pos, self.start_pos + len(self), dtype=np.int32)

    def visual_mask(self) -> np.ndarray:
        """(n,) bool: which entries are visual tokens."""
        return np.concatenate([np.full(len(s), s.is_visual) for s in self.spans])

    def visual_origin(self) -> int:
        """Position of the image's raster index 0 (grid cell (0, 0))."""
        if self.image_origin is not None:
            return self.image_origin
        mask = self.visual_mask()
        return int(self.all_positions()[mask][0]) if mask.any() else -1

    def span_slices(self) -> list[tuple[Span, slice]]:
        out, start = [], 0
        for s in self.spans:
            out.append((s, slice(start, start + len(s))))
            start += len(s)
        return out
