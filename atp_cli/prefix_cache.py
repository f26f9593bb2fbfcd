"""What the layers before the first pruning point leave for a prompt, kept for the next strategy that asks.

Every strategy whose first module sits at the same boundary b runs layers [0, b) on the same prompt identically:
the cache those layers fill, the hidden states they pass on and the attention the module reads are the same. A
benchmark that answers one question with many such strategies therefore computes them once: the first decoder to
prefill the prompt stores them here, the others load them (the cache through llama.cpp's sequence state) and start
at the boundary. Bounded in bytes, least recently used out first; off unless a size is configured.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from atp_cli.prompt_input import Prompt


@dataclass(frozen=True)
class FirstSegment:
    state: bytes  # the first segment's cache (llama.cpp sequence state)
    pos_max: int
    n_tokens: int
    hidden: np.ndarray  # hidden states of every prompt entry after the first segment
    attention: np.ndarray  # head-mean attention of its last layer: rows = entries, columns = cache cells
    cell_of: np.ndarray  # position -> cell of `attention`'s columns
    seconds: float  # what computing it took (reported as the prefill's cost when it is reused)

    @property
    def nbytes(self) -> int:
        return len(self.state) + self.hidden.nbytes + self.attention.nbytes + self.cell_of.nbytes


def prompt_key(prompt: Prompt, layers: tuple[int, int], readout_layer: int) -> str:
    """Content hash of everything the first segment's result depends on."""
    h = hashlib.blake2b(digest_size=20)
    h.update(np.asarray([*layers, readout_layer], np.int64).tobytes())
    for span in prompt.spans:
        data = span.embd if span.is_visual else span.tokens
        h.update(b"v" if span.is_visual else b"t")
        h.update(np.ascontiguousarray(data).tobytes())
    h.update(np.ascontiguousarray(prompt.all_positions(), np.int64).tobytes())
    return h.hexdigest()


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, FirstSegment] = OrderedDict()
        self.hits = 0
        self.nbytes = 0

    def get(self, key: str) -> FirstSegment | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return item

    def put(self, key: str, item: FirstSegment) -> None:
        if item.nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = item
        self.nbytes += item.nbytes
        while self.nbytes > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1].nbytes
