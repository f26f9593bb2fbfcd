"""A llava-hf `LlavaForConditionalGeneration` folder: configuration, tensors (streamed), tokenizer files.

Tensors are read one at a time from the safetensors shards (or .bin shards), so a 7B checkpoint never sits
in memory whole. Names are normalised to one layout whatever transformers version saved the checkpoint:
`vision_tower.*` (no `vision_model.`), `multi_modal_projector.*`, `language_model.*`.
"""

from __future__ import annotations

import json
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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"missing {path.name} in {path.parent}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot parse {path}: {e}") from e


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
    ckpt = LlavaCheckpoint(folder, config, vision, text, _shards(folder), preprocessor)
    _check_dimensions(ckpt)
    return ckpt


def _check_dimensions(ckpt: LlavaCheckpoint) -> None:
    v, t = ckpt.vision, ckpt.text
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
        if key not in v:
            raise ModelError(f"vision_config lacks {key!r}")
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
    one shard and one tensor at a time (the others are never read)."""
    import torch
    from safetensors import SafetensorError

    for shard in ckpt.shards:
        try:
            if shard.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(shard), framework="pt") as f:
                    for name in f.keys():
                        if normalise_name(name).startswith(prefixes):
                            yield normalise_name(name), f.get_tensor(name).to(torch.float32).numpy()
            else:
                state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
                for name, tensor in state.items():
                    if normalise_name(name).startswith(prefixes):
                        yield normalise_name(name), tensor.to(torch.float32).numpy()
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            raise ModelError(f"cannot read weights from {shard}: {e}") from e
