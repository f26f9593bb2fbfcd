"""Owner of a loaded `llama_model`: load, metadata, tokenizer, free."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
from llama_cpp import llama_cpp as llama

from atp_cli.errors import InputError, ModelError
from atp_cli.runtime.log import raise_pending_interrupt
from atp_cli.runtime.owner import Closeable

log = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama.llama_backend_init()
        _backend_ready = True


def check_gguf_file(path: Path) -> None:
    """Raise ModelError unless `path` is a readable GGUF file (llama.cpp would only log and return NULL)."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e}") from e
    if magic != _GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (magic {magic!r})")


class LlamaModel(Closeable):
    """A llama.cpp model loaded once and shared by every context made from it."""

    def __init__(self, path: str | Path, n_gpu_layers: int = 0, use_mmap: bool = True) -> None:
        self.path = Path(path)
        check_gguf_file(self.path)
        _init_backend()
        params = llama.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_mmap = use_mmap
        ptr = llama.llama_model_load_from_file(str(self.path).encode(), params)
        try:
            raise_pending_interrupt()
        except KeyboardInterrupt:
            if ptr:
                llama.llama_model_free(ptr)
            raise
        if not ptr:
            raise ModelError(f"llama.cpp could not load {self.path} (see the log above for why)")
        self.ptr = ptr
        self.vocab = llama.llama_model_get_vocab(ptr)
        self.n_layer = int(llama.llama_model_n_layer(ptr))
        self.n_embd = int(llama.llama_model_n_embd(ptr))
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))
        self.arch = self.meta("general.architecture") or "?"
        self._special_texts: tuple[str, ...] | None = None

    # -- metadata ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when the key is absent."""
        buf = ctypes.create_string_buffer(4096)
        n = llama.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    # -- tokenizer --------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> np.ndarray:
        """Token ids of `text` as int32."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        out = (llama.llama_token * cap)()
        n = llama.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            out = (llama.llama_token * cap)()
            n = llama.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        return np.ctypeslib.as_array(out)[:n].astype(np.int32)

    def special_texts(self) -> tuple[str, ...]:
        """The texts that `tokenize(parse_special=True)` turns into control or user-defined tokens (cached).

        A chat template writes them on purpose; user text that contains one must not become that token."""
        if self._special_texts is None:
            special = llama.LLAMA_TOKEN_ATTR_CONTROL | llama.LLAMA_TOKEN_ATTR_USER_DEFINED
            texts = set()
            for token in range(self.n_vocab):
                if llama.llama_vocab_get_attr(self.vocab, token) & special:
                    text = self.token_piece(token).decode("utf-8", errors="replace")
                    if text:
                        texts.add(text)
            self._special_texts = tuple(sorted(texts))
        return self._special_texts

    def token_piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens rendered as their text)."""
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    def check_tokens(self, tokens: np.ndarray) -> None:
        """Raise InputError for ids llama.cpp would reject."""
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.n_vocab):
            raise InputError(f"token ids must be in [0, {self.n_vocab}), got [{tokens.min()}, {tokens.max()}]")

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama.llama_model_free(self.ptr)
            self.ptr = None
