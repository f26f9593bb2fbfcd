"""Rows of a GGUF model's token embedding table, read on demand (memory-mapped, dequantized with gguf-py).

Instruction-conditioned pre-LLM selection (CDPruner, the hybrid) compares the visual rows with the question's
tokens in the language model's input space; llama.cpp does not hand out its embedding table, so the rows are read
from the model file itself, a few at a time.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from atp_cli.errors import ModelError
from atp_cli.gguf_read import open_gguf

TABLE = "token_embd.weight"


class TokenEmbeddings:
    def __init__(self, model_path: str | Path) -> None:
        reader = open_gguf(model_path)
        table = next((t for t in reader.tensors if t.name == TABLE), None)
        if table is None:
            raise ModelError(f"{model_path} has no {TABLE} tensor")
        self._data, self._type = table.data, table.tensor_type
        self.n_vocab = int(table.shape[-1])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), d) float32 embeddings of the token ids."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ModelError(f"token id outside the vocabulary of {self.n_vocab}")
        try:
            return gguf.quants.dequantize(np.asarray(self._data[ids]), self._type).astype(np.float32)
        except NotImplementedError as e:
            raise ModelError(f"the token embeddings are stored as {self._type.name}, which gguf-py cannot read "
                             "back; instruction-conditioned selection needs another quantization") from e
