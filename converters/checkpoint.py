"""A llava-hf `LlavaForConditionalGeneration` folder: configuration, tensors (streamed), tokenizer files.

Tensors are read one at a time from the safetensors shards (or .bin shards), so a 7B checkpoint never sits
in memory whole. Names are normalised to one layout whatever transformers version saved the checkpoint:
`vision_tower.*` (no `vision_model.`), `multi_modal_projector.*`, `language_model.*`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atp_cli.errors import InputError, ModelError

VISION_TOWERS = ("clip_vision_model", "siglip_vision_model", "dinov2")
TEXT_MODELS = ("llama", "mistral")
PROJECTOR_ACTS = ("gelu",)

# older llava-hf layouts -> the normalised one (first match wins)
_PREFIXES = (
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def normalise_name(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


@dataclass(frozen=True)
class LlavaCheckpoint:
    """What the converter needs to know about a checkpoint folder, checked up front."""

    path: Path
    config: dict
    vision: dict  # vision_config with defaults filled
    text: dict  # text_config
    shards: tuple[Path, ...]
    preprocessor: dict

    @property
    def vision_type(self) -> str:
        return self.vision["model_type"]

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The tower hidden states the projector reads, as non-negative indices (0 = the embeddings), ascending.

        LLaVA reads one (`vision_feature_layer: -2`); a list concatenates several along the features, in the
        order given, which llama.cpp's graph reproduces only when it is ascending (checked in `open_checkpoint`)."""
        layer = self.config.get("vision_feature_layer", -2)
        n = self.vision["num_hidden_layers"]
        return tuple(i + n + 1 if i < 0 else i for i in ([layer] if isinstance(layer, int) else layer))


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"missing {path.name} in {path.parent}") from e
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise ModelError(f"cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a JSON {type(data).__name__}; expected an object")
    return data


def _positive_int(section: dict, key: str, where: str, required: bool = True) -> None:
    value = section.get(key)
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{where}.{key} = {value!r}; expected a positive integer")


def _check_preprocessor(pre: dict) -> None:
    crop = pre.get("crop_size")
    if crop is not None:
        if isinstance(crop, dict):
            _positive_int(crop, "height", "preprocessor_config.json crop_size", required=False)
        elif isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
            raise ModelError(f"preprocessor_config.json crop_size = {crop!r}; expected a positive integer or "
                             "{'height': H, 'width': W}")
    for key, positive in (("image_mean", False), ("image_std", True)):
        v = pre.get(key)
        if v is None:
            continue
        ok = isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       and math.isfinite(x) for x in v)
        if not ok or (positive and min(v) <= 0):
            raise ModelError(f"preprocessor_config.json {key} = {v!r}; expected 3 finite numbers"
                             f"{' > 0' if positive else ''}")


def _shards(folder: Path) -> tuple[Path, ...]:
    for pattern in ("*.safetensors", "*.bin"):
        found = tuple(sorted(p for p in folder.glob(pattern) if p.is_file()))
        if found:
            return found
    raise ModelError(f"no .safetensors or .bin weight files in {folder}")


def open_checkpoint(folder: str | Path) -> LlavaCheckpoint:
    """Read and validate a checkpoint folder; every unsupported part is named in the error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"checkpoint folder not found: {folder}")
    config = _load_json(folder / "config.json")
    archs = config.get("architectures") or []
    if config.get("model_type") != "llava" and "LlavaForConditionalGeneration" not in archs:
        raise ModelError(
            f"{folder} is not a LlavaForConditionalGeneration checkpoint (model_type {config.get('model_type')!r}); "
            "supported: llava-hf layout with CLIP, SigLIP or DINOv2 towers and a llama-architecture LLM"
        )
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    for name, section in (("vision_config", vision), ("text_config", text)):
        if not isinstance(section, dict):
            raise ModelError(f"config.json {name} = {section!r}; expected an object")
    if vision.get("model_type") not in VISION_TOWERS:
        raise ModelError(f"vision tower {vision.get('model_type')!r} is not supported; supported: {VISION_TOWERS}")
    if text.get("model_type", "llama") not in TEXT_MODELS:
        raise ModelError(f"language model {text.get('model_type')!r} is not supported; supported: {TEXT_MODELS}")
    act = config.get("projector_hidden_act", "gelu")
    if act not in PROJECTOR_ACTS:
        raise ModelError(f"projector activation {act!r} is not supported; supported: {PROJECTOR_ACTS}")
    strategy = config.get("vision_feature_select_strategy", "default")
    expected = "full" if vision["model_type"] == "siglip_vision_model" else "default"
    if strategy != expected:
        raise ModelError(f"vision_feature_select_strategy {strategy!r} with a {vision['model_type']} tower is not "
                         f"supported; the patch tokens alone are selected by {expected!r} for this tower")
    layer = config.get("vision_feature_layer", -2)
    if not (isinstance(layer, int) or (isinstance(layer, list) and layer and all(isinstance(i, int) for i in layer))):
        raise ModelError(f"vision_feature_layer must be an integer or a list of integers, got {layer!r}")
    pre = folder / "preprocessor_config.json"
    preprocessor = _load_json(pre) if pre.is_file() else {}
    _check_preprocessor(preprocessor)
    ckpt = LlavaCheckpoint(folder, config, vision, text, _shards(folder), preprocessor)
    _check_dimensions(ckpt)
    return ckpt


def _check_dimensions(ckpt: LlavaCheckpoint) -> None:
    v, t = ckpt.vision, ckpt.text
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
        if key not in v:
            raise ModelError(f"vision_config lacks {key!r}")
        _positive_int(v, key, "vision_config")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        _positive_int(t, key, "text_config", required=key == "hidden_size")
    if v["hidden_size"] % v["num_attention_heads"]:
        raise ModelError(f"vision_config.num_attention_heads = {v['num_attention_heads']} does not divide "
                         f"hidden_size = {v['hidden_size']}")
    layers = ckpt.feature_layers
    if not all(1 <= i <= v["num_hidden_layers"] for i in layers):
        raise ModelError(f"vision_feature_layer {ckpt.config.get('vision_feature_layer')} is outside the tower's "
                         f"{v['num_hidden_layers']} layers")
    if list(layers) != sorted(set(layers)):
        raise ModelError(f"vision_feature_layer {ckpt.config.get('vision_feature_layer')}: several layers must be "
                         "distinct and in ascending order (the order llama.cpp concatenates them in)")
    if v["image_size"] % v["patch_size"]:
        raise ModelError(f"image size {v['image_size']} is not a multiple of the patch size {v['patch_size']}")
    if "hidden_size" not in t:
        raise ModelError("text_config lacks 'hidden_size'")


def iter_tensors(ckpt: LlavaCheckpoint, prefixes: tuple[str, ...] = ("",)) -> Iterator[tuple[str, np.ndarray]]:
    """(normalised name, float32 array) for the tensors whose normalised name starts with one of `prefixes`,
    one shard and one tensor at a time (the others are never read). safetensors are read with numpy; torch is
    needed only for bfloat16 tensors (numpy has no such type) and for .bin shards."""
    from safetensors import SafetensorError

    for shard in ckpt.shards:
        try:
            if shard.suffix == ".safetensors":
                yield from _safetensors_arrays(shard, prefixes)
            else:
                import torch

                state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
                for name, tensor in state.items():
                    if normalise_name(name).startswith(prefixes):
                        yield normalise_name(name), tensor.to(torch.float32).numpy()
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            raise ModelError(f"cannot read weights from {shard}: {e}") from e


def _safetensors_arrays(shard: Path, prefixes: tuple[str, ...]) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(shard), framework="numpy") as f:
        names = [n for n in f.keys() if normalise_name(n).startswith(prefixes)]
        bf16 = [n for n in names if f.get_slice(n).get_dtype() == "BF16"]
        for name in names:
            if name not in bf16:
                yield normalise_name(name), f.get_tensor(name).astype(np.float32)
    if bf16:
        import torch

        with safe_open(str(shard), framework="pt") as f:
            for name in bf16:
                yield normalise_name(name), f.get_tensor(name).to(torch.float32).numpy()


def tensor_index(ckpt: LlavaCheckpoint) -> dict[str, tuple[int, ...]]:
    """Normalised name -> shape of every tensor in the shards, read from their headers (no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in ckpt.shards:
        try:
            if shard.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(shard), framework="numpy") as f:
                    for name in f.keys():
                        shapes[normalise_name(name)] = tuple(f.get_slice(name).get_shape())
            else:
                import torch

                state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
                shapes.update({normalise_name(k): tuple(t.shape) for k, t in state.items()})
        except Exception as e:  # safetensors and torch raise their own types for corrupt shards
            raise ModelError(f"cannot read weights from {shard}: {e}") from e
    return shapes


def expected_shapes(ckpt: LlavaCheckpoint, block: str, block_map: dict[str, str], n_blocks: int,
                    text: bool = True) -> dict[str, tuple | None]:
    """The tensors the conversion reads and the shapes the configuration implies (None: any shape).

    `block`, `block_map`: the tower's block name pattern and its per-block tensors (converters.vision_towers);
    `text`: the language model is converted from the checkpoint too."""
    v, t = ckpt.vision, ckpt.text
    d = v["hidden_size"]
    ff = v.get("intermediate_size") or 4 * d
    want: dict[str, tuple | None] = {}
    for i in range(n_blocks):
        pre = "vision_tower." + block.format(i=i)
        for hf, gg in block_map.items():
            shape = {"ffn_up": (ff, d), "ffn_down": (d, ff)}.get(gg, (d,) if gg.startswith("ln") else (d, d))
            want[pre + hf + ".weight"] = None if v["model_type"] == "dinov2" and gg.startswith("ffn") else shape
    h = t["hidden_size"]
    want["multi_modal_projector.linear_1.weight"] = None
    n_text = t.get("num_hidden_layers")
    if n_text is None or not text:
        return want
    heads = t.get("num_attention_heads")
    kv = t.get("num_key_value_heads") or heads
    head_dim = t.get("head_dim") or (h // heads if heads else None)
    inter, vocab = t.get("intermediate_size"), t.get("vocab_size")
    lm = "language_model.model."
    want[lm + "embed_tokens.weight"] = (vocab, h) if vocab else None
    want[lm + "norm.weight"] = (h,)
    for i in range(n_text):
        p = f"{lm}layers.{i}."
        q = (heads * head_dim, h) if heads and head_dim else None
        k = (kv * head_dim, h) if kv and head_dim else None
        want.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                     p + "self_attn.v_proj.weight": k,
                     p + "self_attn.o_proj.weight": (h, heads * head_dim) if q else None,
                     p + "mlp.gate_proj.weight": (inter, h) if inter else None,
                     p + "mlp.up_proj.weight": (inter, h) if inter else None,
                     p + "mlp.down_proj.weight": (h, inter) if inter else None,
                     p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    return want


def check_tensors(ckpt: LlavaCheckpoint, block: str, block_map: dict[str, str], n_blocks: int,
                  text: bool = True) -> None:
    """Every tensor the configuration implies is present with its shape, and the language model has no layer the
    configuration does not count: a mismatch is named before any conversion work starts."""
    have = tensor_index(ckpt)
    for name, shape in expected_shapes(ckpt, block, block_map, n_blocks, text).items():
        if name not in have:
            raise ModelError(f"checkpoint lacks tensor {name} (its config implies it)")
        if shape is not None and have[name] != shape:
            raise ModelError(f"checkpoint tensor {name} has shape {list(have[name])}; its config implies {list(shape)}")
    n_text = ckpt.text.get("num_hidden_layers")
    if n_text is not None and text:
        layers = {int(n.split(".")[3]) for n in have if n.startswith("language_model.model.layers.")
                  and n.split(".")[3].isdigit()}
        if layers and max(layers) >= n_text:
            raise ModelError(f"text_config.num_hidden_layers = {n_text}, but the checkpoint holds language-model "
                             f"layers up to {max(layers)}")
    if "multi_modal_projector.linear_2.weight" in have:
        w1, w2 = have["multi_modal_projector.linear_1.weight"], have["multi_modal_projector.linear_2.weight"]
        if len(w2) != 2 or w2[0] != ckpt.text["hidden_size"] or w2[1] != w1[0]:
            raise ModelError(f"projector shapes {list(w1)} -> {list(w2)} do not lead to the language model's "
                             f"{ckpt.text['hidden_size']}")
