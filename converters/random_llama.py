"""Random-weight llama-architecture GGUF files.

Tests need small models whose every weight is known (to check the runtime against an independent numpy
forward), and the speed benchmarks need models with the *shape* of real ones without downloading them.
Both come from here. The tokenizer is a byte-fallback SentencePiece vocabulary (256 byte tokens plus
<unk>/<s>/</s> and a few words), enough for llama.cpp to load the file and to tokenize any text.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class LlamaShape:
    """Hyper-parameters of a llama decoder; defaults give a model that loads in milliseconds."""

    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    extra_words: tuple[str, ...] = field(default=("▁the", "▁image", "▁cat", "▁a", "▁is"))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_vocab(self) -> int:
        return 3 + 256 + len(self.extra_words)


# tokenizer.ggml.token_type values (llama_token_type in llama.h)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def _vocab(shape: LlamaShape) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + list(shape.extra_words)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i + 1) for i in range(len(shape.extra_words))]
    types = [_UNKNOWN, _CONTROL, _CONTROL] + [_BYTE] * 256 + [_NORMAL] * len(shape.extra_words)
    return tokens, scores, types


def tensor_shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names and (out, in) shapes, in file order."""
    d, dh, ff = shape.n_embd, shape.head_dim, shape.n_ff
    dims: dict[str, tuple[int, ...]] = {"token_embd.weight": (shape.n_vocab, d), "output_norm.weight": (d,),
                                        "output.weight": (shape.n_vocab, d)}
    for i in range(shape.n_layer):
        dims.update({
            f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.attn_q.weight": (shape.n_head * dh, d),
            f"blk.{i}.attn_k.weight": (shape.n_head_kv * dh, d), f"blk.{i}.attn_v.weight": (shape.n_head_kv * dh, d),
            f"blk.{i}.attn_output.weight": (d, shape.n_head * dh), f"blk.{i}.ffn_norm.weight": (d,),
            f"blk.{i}.ffn_gate.weight": (ff, d), f"blk.{i}.ffn_up.weight": (ff, d), f"blk.{i}.ffn_down.weight": (d, ff),
        })
    return dims


def iter_random_weights(shape: LlamaShape, seed: int = 0, scale: float = 0.5) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 weight) one tensor at a time: a 7B-shape file is written without holding it in memory."""
    rng = np.random.default_rng(seed)
    for name, dims in tensor_shapes(shape).items():
        if len(dims) == 1:
            yield name, (1.0 + 0.1 * rng.standard_normal(dims, dtype=np.float32))
        elif name == "token_embd.weight":
            yield name, rng.standard_normal(dims, dtype=np.float32)
        else:
            yield name, rng.standard_normal(dims, dtype=np.float32) * np.float32(scale / np.sqrt(dims[1]))


def random_weights(shape: LlamaShape, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
    """GGUF-named float32 weights, (out, in) row-major as llama.cpp reads them."""
    return dict(iter_random_weights(shape, seed, scale))


def write_llama_gguf(
    path: Path | str,
    shape: LlamaShape,
    weights: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    arch: str = "llama",
    f16: bool = False,
) -> Path:
    """Write a llama GGUF (float32, or float16 matrices with `f16`) atomically and return its path.

    Without `weights` the random tensors are generated and written one at a time (constant memory).
    `arch` exists so that tests can produce a file of another architecture name with the same tensors.
    """
    path = Path(path)
    tokens, scores, types = _vocab(shape)

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name("atp random llama")
        w.add_context_length(shape.n_ctx_train)
        w.add_embedding_length(shape.n_embd)
        w.add_block_count(shape.n_layer)
        w.add_feed_forward_length(shape.n_ff)
        w.add_head_count(shape.n_head)
        w.add_head_count_kv(shape.n_head_kv)
        w.add_layer_norm_rms_eps(shape.rms_eps)
        w.add_rope_dimension_count(shape.head_dim)
        w.add_rope_freq_base(shape.rope_freq_base)
        w.add_vocab_size(shape.n_vocab)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        dims = tensor_shapes(shape) if weights is None else {k: v.shape for k, v in weights.items()}
        stored = {name: np.float16 if f16 and len(d) == 2 else np.float32 for name, d in dims.items()}
        for name, d in dims.items():
            w.add_tensor_info(name, d, np.dtype(stored[name]), int(np.prod(d)) * np.dtype(stored[name]).itemsize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        source = iter_random_weights(shape, seed) if weights is None else iter(weights.items())
        for name, arr in source:
            w.write_tensor_data(np.ascontiguousarray(arr, dtype=stored[name]))
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
