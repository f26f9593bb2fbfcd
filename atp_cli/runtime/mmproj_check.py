"""An mmproj GGUF checked before libmtmd opens it: the clip keys its graph builder asserts on, and the tensors and
shapes those keys imply.

llama.cpp's clip loader trusts the file: a head count that does not divide the width, a patch size that does not
divide the image, or a missing block tensor ends in a GGML_ASSERT that kills the process. Here each one is a
ModelError naming the key (or tensor), the value seen and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from atp_cli.errors import ModelError
from atp_cli.gguf_read import field_value, open_gguf


_T = gguf.GGUFValueType
# scalar keys libmtmd reads with gguf_get_val_<type>, which asserts on any other stored type (arrays it checks itself)
SCALAR_TYPES = {
    "general.name": _T.STRING, "general.description": _T.STRING, "general.file_type": _T.UINT32,
    "clip.projector_type": _T.STRING, "clip.vision.projector_type": _T.STRING,
    "clip.vision.mm_patch_merge_type": _T.STRING,
    "clip.has_vision_encoder": _T.BOOL, "clip.has_audio_encoder": _T.BOOL, "clip.has_gen_audio_encoder": _T.BOOL,
    "clip.has_llava_projector": _T.BOOL, "clip.use_gelu": _T.BOOL, "clip.use_silu": _T.BOOL,
    "clip.minicpmv_version": _T.INT32, "clip.minicpmv_query_num": _T.UINT32,
    "clip.vision.attention.layer_norm_epsilon": _T.FLOAT32,
    **{f"clip.vision.{k}": _T.UINT32 for k in (
        "embedding_length", "feed_forward_length", "block_count", "projection_dim", "attention.head_count",
        "attention.head_count_kv", "attention.head_dim", "image_size", "patch_size", "image_min_pixels",
        "image_max_pixels", "preproc_min_tiles", "preproc_max_tiles", "preproc_image_size", "spatial_merge_size",
        "projector.scale_factor", "n_wa_pattern", "window_size")},
}


def _check_types(reader: gguf.GGUFReader, where: str) -> None:
    for key, expected in SCALAR_TYPES.items():
        field = reader.fields.get(key)
        if field is not None and field.types and field.types[0] != expected:
            raise ModelError(f"{where}: {key} is stored as {field.types[0].name}; llama.cpp reads it as "
                             f"{expected.name}")


@dataclass(frozen=True)
class MmprojInfo:
    image_size: int
    patch_size: int
    width: int  # vision embedding length
    n_blocks: int
    out_dim: int  # rows the projector gives the language model

    @property
    def n_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _int(reader: gguf.GGUFReader, key: str, lo: int, hi: int, where: str) -> int:
    v = field_value(reader, key)
    if v is None:
        raise ModelError(f"{where}: {key} is missing; expected an integer in [{lo}, {hi}]")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ModelError(f"{where}: {key} = {v!r}; expected an integer in [{lo}, {hi}]")
    return int(v)


def _floats(reader: gguf.GGUFReader, key: str, n: int, positive: bool, where: str) -> None:
    v = field_value(reader, key)
    if v is None:
        return
    ok = isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
    if not ok or (positive and min(v) <= 0):
        raise ModelError(f"{where}: {key} = {v!r}; expected {n} finite numbers{' > 0' if positive else ''}")


def _shapes(reader: gguf.GGUFReader) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in row-major (numpy) order."""
    return {t.name: tuple(int(x) for x in reversed(t.shape.tolist())) for t in reader.tensors}


def check_mmproj(path: str | Path, n_embd_text: int | None = None) -> MmprojInfo:
    """Validate an mmproj for llama.cpp's llava graph; `n_embd_text`: the language model's width, when known."""
    path = Path(path)
    where = str(path)
    reader = open_gguf(path)
    _check_types(reader, where)
    if not field_value(reader, "clip.has_vision_encoder"):
        raise ModelError(f"{where} has no vision encoder (clip.has_vision_encoder); is it an mmproj file?")
    image = _int(reader, "clip.vision.image_size", 1, 8192, where)
    patch = _int(reader, "clip.vision.patch_size", 1, image, where)
    if image % patch:
        raise ModelError(f"{where}: clip.vision.image_size = {image} is not a multiple of clip.vision.patch_size "
                         f"= {patch}")
    width = _int(reader, "clip.vision.embedding_length", 1, 65536, where)
    heads = _int(reader, "clip.vision.attention.head_count", 1, width, where)
    if width % heads:
        raise ModelError(f"{where}: clip.vision.attention.head_count = {heads} does not divide "
                         f"clip.vision.embedding_length = {width}")
    blocks = _int(reader, "clip.vision.block_count", 1, 1024, where)
    eps = field_value(reader, "clip.vision.attention.layer_norm_epsilon")
    if eps is not None and not (isinstance(eps, float) and math.isfinite(eps) and 0 < eps < 1):
        raise ModelError(f"{where}: clip.vision.attention.layer_norm_epsilon = {eps!r}; expected a number in (0, 1)")
    _floats(reader, "clip.vision.image_mean", 3, False, where)
    _floats(reader, "clip.vision.image_std", 3, True, where)
    layers = field_value(reader, "clip.vision.feature_layer")
    if layers is not None and (not isinstance(layers, list)
                               or not all(isinstance(x, int) and -1 <= x <= blocks for x in layers)):
        raise ModelError(f"{where}: clip.vision.feature_layer = {layers!r}; expected layers in [0, {blocks}]")
    projection = field_value(reader, "clip.vision.projection_dim")  # CLIP's own projection: unused by the llava graph
    if (field_value(reader, "clip.projector_type") or "mlp") == "mlp":  # LLaVA's projector: its tensors are known
        out_dim = _check_tensors(_shapes(reader), width, blocks, image, patch, where)
    else:  # other projectors: mtmd checks their output width against the language model itself
        out_dim = int(projection) if isinstance(projection, int) else (n_embd_text or 0)
    if n_embd_text is not None and out_dim != n_embd_text:
        raise ModelError(f"{where}: the projector gives rows of {out_dim}, the language model takes {n_embd_text}")
    return MmprojInfo(image, patch, width, blocks, out_dim)


def _check_tensors(shapes: dict[str, tuple[int, ...]], width: int, blocks: int, image: int, patch: int,
                   where: str) -> int:
    """Tensors the llava graph reads, with the shapes the keys imply; returns the projector's output width."""
    def need(name: str, expected: tuple[int, ...] | None = None) -> tuple[int, ...]:
        shape = shapes.get(name)
        if shape is None:
            raise ModelError(f"{where}: tensor {name} is missing")
        if expected is not None and shape != expected:
            raise ModelError(f"{where}: tensor {name} has shape {list(shape)}; expected {list(expected)}")
        return shape

    need("v.patch_embd.weight", (width, 3, patch, patch))
    n_rows = (image // patch) ** 2 + ("v.class_embd" in shapes)
    need("v.position_embd.weight", (n_rows, width))  # one row per patch (and CLS): the graph indexes it so
    if "v.class_embd" in shapes:
        need("v.class_embd", (width,))
    # block tensors up to the deepest layer the graph runs: llama.cpp loads every block it is told there is.
    # The feed-forward width is read from the tensors, as the graph does (feed_forward_length is not used by it)
    for i in range(blocks):
        for m in ("attn_q", "attn_k", "attn_v", "attn_out"):
            need(f"v.blk.{i}.{m}.weight", (width, width))
        up, down = need(f"v.blk.{i}.ffn_up.weight"), need(f"v.blk.{i}.ffn_down.weight")
        # [n_ff, width] then [width, n_ff]; llama.cpp's legacy LLaVA converter stores the two the other way
        # round and mtmd swaps them back by shape
        if not (len(up) == len(down) == 2 and up == down[::-1] and width in up):
            raise ModelError(f"{where}: tensors v.blk.{i}.ffn_up.weight {list(up)} and ffn_down.weight "
                             f"{list(down)} are not a feed-forward pair of width {width}")
    # both layers and both biases: the graph adds the biases unconditionally, and mtmd reads the output width
    # of an "mlp" projector from mm.2.weight
    mm0, mm2 = need("mm.0.weight"), need("mm.2.weight")
    if len(mm0) != 2 or len(mm2) != 2 or mm0[1] % width or mm2[1] != mm0[0]:
        raise ModelError(f"{where}: projector tensors mm.0.weight {list(mm0)} and mm.2.weight {list(mm2)} do not "
                         f"chain from the tower's {width} features")
    need("mm.0.bias", (mm0[0],))
    need("mm.2.bias", (mm2[0],))
    _check_vectors(shapes, width, where)
    return mm2[0]


def _check_vectors(shapes: dict[str, tuple[int, ...]], width: int, where: str) -> None:
    """Optional tensors, where present, of the size the graph adds or multiplies them at: each bias as long as its
    weight's output, each norm as wide as the tower."""
    for name, shape in shapes.items():
        if name.endswith(".bias") and name.startswith(("v.", "mm.")):
            weight = shapes.get(name[: -len("bias")] + "weight")
            rows = weight[0] if weight else None
            if ".ln" in name or "_ln" in name or "norm" in name:
                rows = width
            if rows is not None and shape != (rows,):
                raise ModelError(f"{where}: tensor {name} has shape {list(shape)}; expected [{rows}]")
        elif name.endswith(".weight") and (".ln" in name or "_ln" in name or "norm" in name) and shape != (width,):
            raise ModelError(f"{where}: tensor {name} has shape {list(shape)}; expected [{width}]")
