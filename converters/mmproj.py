"""Write the vision tower + projector of a LLaVA checkpoint as a llama.cpp mmproj GGUF ("mlp" projector)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from atp_cli.errors import ModelError
from converters.checkpoint import LlavaCheckpoint, iter_tensors
from converters.vision_towers import block_tensors, embedding_tensors, layout

# a linear projector runs through the mlp graph as mm.2(gelu(mm.0 x + b + C)) - C with mm.2 = I:
# ggml's GELU returns its input unchanged from 10 on, so this is exact while |W x + b| < C - 10
LINEAR_SHIFT = 64.0

_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def n_blocks_run(ckpt: LlavaCheckpoint) -> int:
    """Blocks LLaVA runs: up to its deepest hidden_states[feature_layer], with hidden_states[0] the embeddings."""
    return max(ckpt.feature_layers)


def projector_tensors(state: dict[str, np.ndarray], n_text: int) -> dict[str, np.ndarray]:
    w1 = state.get("multi_modal_projector.linear_1.weight")
    if w1 is None:
        raise ModelError("checkpoint lacks multi_modal_projector.linear_1.weight")
    b1 = state.get("multi_modal_projector.linear_1.bias", np.zeros(w1.shape[0], np.float32))
    w2 = state.get("multi_modal_projector.linear_2.weight")
    if w2 is None:  # linear projector
        if w1.shape[0] != n_text:
            raise ModelError(f"projector outputs {w1.shape[0]} features, the language model takes {n_text}")
        return {"mm.0.weight": w1, "mm.0.bias": b1 + LINEAR_SHIFT,
                "mm.2.weight": np.eye(n_text, dtype=np.float32), "mm.2.bias": np.full(n_text, -LINEAR_SHIFT, np.float32)}
    b2 = state.get("multi_modal_projector.linear_2.bias", np.zeros(w2.shape[0], np.float32))
    if w2.shape[0] != n_text or w2.shape[1] != w1.shape[0]:
        raise ModelError(f"projector shapes {w1.shape} -> {w2.shape} do not lead to the language model's {n_text}")
    return {"mm.0.weight": w1, "mm.0.bias": b1, "mm.2.weight": w2, "mm.2.bias": b2}


MMPROJ_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # -> general.file_type (llama.cpp's ftype numbering)


def _stored(name: str, arr: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """(data, raw type) of a tensor in an mmproj of `dtype`. 1-D tensors, the position table and the identity of a
    linear projector stay F32; the patch embedding (a convolution) stays F16; with q8_0 the matrices the encoder
    multiplies by (attention, MLP, projector) are Q8_0 where their rows split into 32-value blocks, else F16."""
    keep_f32 = arr.ndim < 2 or name == "v.position_embd.weight" or (name == "mm.2.weight" and arr.shape[0] == arr.shape[1])
    if keep_f32 or dtype == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32), None
    if dtype == "q8_0" and arr.ndim == 2 and arr.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q = gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
        return q, gguf.GGMLQuantizationType.Q8_0
    if dtype == "bf16" and arr.ndim == 2:
        return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), gguf.GGMLQuantizationType.BF16), \
            gguf.GGMLQuantizationType.BF16
    return np.ascontiguousarray(arr, dtype=np.float16), None


def mmproj_tensors(ckpt: LlavaCheckpoint, image_size: int, keep_cls: bool) -> dict[str, np.ndarray]:
    lay = layout(ckpt.vision)
    state = dict(iter_tensors(ckpt, (lay.prefix, "multi_modal_projector.")))
    d = ckpt.vision["hidden_size"]
    out = embedding_tensors(state, ckpt.vision, lay, image_size, keep_cls)
    for i in range(n_blocks_run(ckpt)):
        out.update(block_tensors(state, lay, i, d))
    out.update(projector_tensors(state, ckpt.text["hidden_size"]))
    for name, arr in out.items():
        if not np.isfinite(arr).all():
            raise ModelError(f"checkpoint tensor for {name} holds NaN or inf")
    given = d * len(ckpt.feature_layers)
    if out["mm.0.weight"].shape[1] != given:
        raise ModelError(f"projector takes {out['mm.0.weight'].shape[1]} features, the vision tower gives {given} "
                         f"({len(ckpt.feature_layers)} layer(s) of {d})")
    return out


def add_mmproj_keys(w: gguf.GGUFWriter, ckpt: LlavaCheckpoint, image_size: int, dtype: str) -> None:
    v = ckpt.vision
    w.add_string("general.name", f"{ckpt.path.name} mmproj")
    w.add_uint32("general.file_type", MMPROJ_TYPES[dtype])
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", layout(v).uses_gelu)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", v["patch_size"])
    w.add_uint32("clip.vision.embedding_length", v["hidden_size"])
    w.add_uint32("clip.vision.feed_forward_length", v.get("intermediate_size", 4 * v["hidden_size"]))
    w.add_uint32("clip.vision.projection_dim", ckpt.text["hidden_size"])
    w.add_uint32("clip.vision.attention.head_count", v["num_attention_heads"])
    w.add_float32("clip.vision.attention.layer_norm_epsilon", float(v.get("layer_norm_eps", 1e-5)))
    w.add_uint32("clip.vision.block_count", n_blocks_run(ckpt))
    w.add_array("clip.vision.feature_layer", list(ckpt.feature_layers))
    pre = ckpt.preprocessor
    w.add_array("clip.vision.image_mean", [float(x) for x in pre.get("image_mean", _CLIP_MEAN)])
    w.add_array("clip.vision.image_std", [float(x) for x in pre.get("image_std", _CLIP_STD)])


def write_mmproj(ckpt: LlavaCheckpoint, path: Path, image_size: int, keep_cls: bool = True, dtype: str = "f16",
                 extra: Callable[[gguf.GGUFWriter], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
    """Write the mmproj to `path` (the caller renames it into place), its matrices as `dtype` (f16, f32 or q8_0).
    `extra` may add more keys/tensors."""
    if dtype not in MMPROJ_TYPES:
        raise ModelError(f"mmproj type {dtype!r} is not one of {', '.join(MMPROJ_TYPES)}")
    if image_size % ckpt.vision["patch_size"]:
        raise ModelError(f"image size {image_size} is not a multiple of the patch size {ckpt.vision['patch_size']}")
    tensors = mmproj_tensors(ckpt, image_size, keep_cls)
    w = gguf.GGUFWriter(path, "clip")
    add_mmproj_keys(w, ckpt, image_size, dtype)
    for name, arr in tensors.items():
        data, raw = _stored(name, arr, dtype)
        w.add_tensor(name, data, raw_dtype=raw)
    if extra is not None:
        extra(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    if progress is not None:
        progress(len(tensors))
