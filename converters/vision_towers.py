"""Vision towers (CLIP, SigLIP, DINOv2) as llama.cpp's LLaVA ("mlp" projector) graph expects them.

Each tower has a table from its Hugging Face names to the GGUF names, plus the fixes that make the llama.cpp
graph compute what transformers computes:
- only the blocks up to `vision_feature_layer` are stored and run (`clip.vision.feature_layer`), and the
  post-layernorm is left out (LLaVA reads hidden_states[feature_layer], before any final norm);
- DINOv2's layer scale (ignored by the llava graph) is folded into attn_out and ffn_down;
- DINOv2's position grid is resized to the converted image size as transformers resizes it at run time
  (bicubic, half-pixel centres; `bicubic_matrix`, tested against torch);
- a CLS token is stored as `v.class_embd` with the CLS position row first (exact with atp's llama.cpp, whose
  patch 0005 puts CLS first; stock llama.cpp appends it last), or dropped with `keep_cls=False`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp_cli.errors import ModelError

# per-block HF suffix -> GGUF suffix, per tower family
_CLIP_BLOCK = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out",
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}
_DINOV2_BLOCK = {
    "attention.attention.query": "attn_q",
    "attention.attention.key": "attn_k",
    "attention.attention.value": "attn_v",
    "attention.output.dense": "attn_out",
    "norm1": "ln1",
    "norm2": "ln2",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}


@dataclass(frozen=True)
class TowerLayout:
    prefix: str  # where the tower's tensors start (normalised names)
    block: str  # block prefix format, {i} = layer
    block_map: dict[str, str]
    uses_gelu: bool  # False: quick_gelu (OpenAI CLIP)


def layout(vision: dict) -> TowerLayout:
    kind = vision["model_type"]
    act = vision.get("hidden_act", "gelu")
    if kind in ("clip_vision_model", "siglip_vision_model"):
        if act not in ("quick_gelu", "gelu", "gelu_pytorch_tanh"):
            raise ModelError(f"vision activation {act!r} is not supported")
        return TowerLayout("vision_tower.", "encoder.layers.{i}.", _CLIP_BLOCK, act != "quick_gelu")
    if kind == "dinov2":
        if act != "gelu":
            raise ModelError(f"vision activation {act!r} is not supported for DINOv2")
        return TowerLayout("vision_tower.", "encoder.layer.{i}.", _DINOV2_BLOCK, True)
    raise ModelError(f"vision tower {kind!r} is not supported")


def _take(state: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in state:
        raise ModelError(f"checkpoint lacks tensor {name}")
    return state[name]


def block_tensors(state: dict[str, np.ndarray], lay: TowerLayout, i: int, d: int) -> dict[str, np.ndarray]:
    """GGUF tensors of vision block i (layer scale folded in)."""
    pre = lay.prefix + lay.block.format(i=i)
    out: dict[str, np.ndarray] = {}
    for hf, gg in lay.block_map.items():
        out[f"v.blk.{i}.{gg}.weight"] = _take(state, pre + hf + ".weight")
        bias = state.get(pre + hf + ".bias")
        if bias is not None:
            out[f"v.blk.{i}.{gg}.bias"] = bias
    for ls, gg in (("layer_scale1.lambda1", "attn_out"), ("layer_scale2.lambda1", "ffn_down")):
        gamma = state.get(pre + ls)
        if gamma is not None:  # DINOv2: x + gamma * (W h + b)  ==  x + (gamma W) h + gamma b
            out[f"v.blk.{i}.{gg}.weight"] = out[f"v.blk.{i}.{gg}.weight"] * gamma[:, None]
            out[f"v.blk.{i}.{gg}.bias"] = out.get(f"v.blk.{i}.{gg}.bias", np.zeros(d, np.float32)) * gamma
    return out


CUBIC_A = -0.75  # the cubic convolution constant of PyTorch's (and OpenCV's) bicubic resampling


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """(n, 4) weights of the pixels at offsets -1, 0, 1, 2 for fractional positions t (Keys' kernel, a = -0.75)."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bicubic resampling with half-pixel centres (align_corners=False, no
    antialiasing) and edge replication, as `torch.nn.functional.interpolate(mode="bicubic")` computes it."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    m = np.zeros((n_out, n_in), np.float64)
    for k in range(4):
        idx = np.clip(base.astype(int) - 1 + k, 0, n_in - 1)
        np.add.at(m, (np.arange(n_out), idx), weights[:, k])
    return m


def dinov2_positions(vision: dict, table: np.ndarray, image_size: int) -> np.ndarray:
    """DINOv2 position table (1 + G*G, D) resized to the converted grid, as transformers' Dinov2Embeddings does at
    run time: the CLS row kept, the G x G patch rows resampled bicubically (in float32 there; float64 here)."""
    d = vision["hidden_size"]
    table = np.asarray(table, np.float32).reshape(-1, d)
    grid = int(round((table.shape[0] - 1) ** 0.5))
    if grid * grid != table.shape[0] - 1:
        raise ModelError(f"DINOv2 position table has {table.shape[0]} rows; expected 1 + a square number")
    new = image_size // vision["patch_size"]
    if new == grid:
        return table
    m = bicubic_matrix(grid, new)
    patches = table[1:].reshape(grid, grid, d).astype(np.float64)
    resized = np.einsum("ai,ijd,bj->abd", m, patches, m).reshape(new * new, d)
    return np.concatenate([table[:1], resized.astype(np.float32)])


def embedding_tensors(state: dict[str, np.ndarray], vision: dict, lay: TowerLayout, image_size: int,
                      keep_cls: bool) -> dict[str, np.ndarray]:
    """Patch embedding, CLS and position table (CLS row first when kept, patch rows only otherwise)."""
    p = lay.prefix + "embeddings."
    out: dict[str, np.ndarray] = {}
    if vision["model_type"] == "dinov2":
        out["v.patch_embd.weight"] = _take(state, p + "patch_embeddings.projection.weight")
        bias = state.get(p + "patch_embeddings.projection.bias")
        cls = _take(state, p + "cls_token").reshape(-1)
        pos = dinov2_positions(vision, _take(state, p + "position_embeddings"), image_size)
    else:
        out["v.patch_embd.weight"] = _take(state, p + "patch_embedding.weight")
        bias = state.get(p + "patch_embedding.bias")
        cls = state.get(p + "class_embedding")
        pos = _take(state, p + "position_embedding.weight")
        n_patch = (image_size // vision["patch_size"]) ** 2
        if pos.shape[0] != n_patch + (cls is not None):
            raise ModelError(f"position table has {pos.shape[0]} rows for {n_patch} patches at {image_size} px; "
                             "CLIP/SigLIP towers convert at their native image size")
    if bias is not None:
        out["v.patch_embd.bias"] = bias
    if cls is not None and keep_cls:
        out["v.class_embd"] = cls
        out["v.position_embd.weight"] = pos
    else:
        out["v.position_embd.weight"] = pos[1:] if cls is not None else pos
    pre_ln = lay.prefix + "pre_layrnorm."
    if pre_ln + "weight" in state:
        out["v.pre_ln.weight"], out["v.pre_ln.bias"] = state[pre_ln + "weight"], state[pre_ln + "bias"]
    return out
