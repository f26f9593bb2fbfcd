"""Text out of a decoder: tokens -> UTF-8 text pieces, streamed."""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import numpy as np

from atp_cli.driver import SegmentedDecoder
from atp_cli.sampling import Sampler


def stream_text(dec: SegmentedDecoder, logits: np.ndarray, sampler: Sampler, max_tokens: int) -> Iterator[str]:
    """Yield decoded text as tokens are generated (multi-byte characters split across tokens are joined)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in dec.generate(logits, sampler, max_tokens):
        piece = utf8.decode(dec.model.token_piece(token))
        if piece:
            yield piece
    tail = utf8.decode(b"", final=True)
    if tail:
        yield tail
