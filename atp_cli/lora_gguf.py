"""LoRA adapters merged into a GGUF llama model in numpy: the default model's language model without torch.

The adapters are stored in Hugging Face layout (`layers.{i}.self_attn.q_proj.lora_A.weight`, ...); a llama GGUF
holds the same matrices under llama.cpp's names, with the rows of q and k permuted into the interleaved order of
llama.cpp's rotary embedding (what llama.cpp's converter does when it writes a llama model). The merge therefore
permutes each delta `scale * B @ A` the same way, adds it to the dequantized weight and stores the sum as q8_0;
every other tensor is copied as it is, and so is every metadata key (tokenizer, chat template), so the result is
the source model with the adapters folded in.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from atp_cli.errors import ModelError
from atp_cli.files import atomic_path
from atp_cli.gguf_read import open_gguf

# Hugging Face module (below `layers.{i}.`) -> llama.cpp tensor (below `blk.{i}.`)
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
MERGED_TYPE = gguf.GGMLQuantizationType.Q8_0
Q = gguf.GGMLQuantizationType


def rope_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q or k matrix from Hugging Face's half-split rotary order into llama.cpp's interleaved one (per
    head: rows 0..d/2-1 and d/2..d-1 are zipped pairwise), as llama.cpp's converter writes them."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_adapters(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """{`layers.{i}.<module>`: (A, B)} in float32 and the scale, from an adapter file (`atp_cli.train.lora.save`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            scale = float((f.metadata() or {}).get("scale", "1.0"))
            factors = {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise ModelError(f"cannot read LoRA adapters from {path}: {e}") from e
    pairs = {}
    for key, a in factors.items():
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            b = factors.get(f"{name}.lora_B.weight")
            if b is None or b.shape[1] != a.shape[0]:
                raise ModelError(f"{path}: adapter {name} lacks its B factor or its ranks differ")
            pairs[name] = (a, b)
    if not pairs or not np.isfinite(scale):
        raise ModelError(f"{path} holds no LoRA adapters (or a scale that is not finite)")
    return pairs, scale


def _gguf_name(module: str) -> str:
    parts = module.split(".")
    if len(parts) != 4 or parts[0] != "layers" or not parts[1].isdigit() or ".".join(parts[2:]) not in GGUF_NAMES:
        raise ModelError(f"LoRA adapter {module!r} is not one of a llama layer's linear modules")
    return f"blk.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:])]}.weight"


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, file_type: int) -> None:
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # written by the writer itself
        value = field.contents()
        if field.name == "general.file_type":
            value = file_type
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(field.name, value, field.types[0], sub)


def merge_lora_gguf(model: Path, adapters: Path, out: Path) -> Path:
    """Write `model` with `adapters` merged into its weights (merged tensors q8_0) to `out`, atomically."""
    reader = open_gguf(model)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ModelError(f"{model} is a {arch!r} model; LoRA merging knows the llama layout only")
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_head_kv = int(reader.fields.get("llama.attention.head_count_kv", reader.fields["llama.attention.head_count"])
                    .contents())
    pairs, scale = read_adapters(adapters)
    deltas = {_gguf_name(module): (module, a, b) for module, (a, b) in pairs.items()}
    tensors = {t.name: t for t in reader.tensors}
    missing = sorted(set(deltas) - set(tensors))
    if missing:
        raise ModelError(f"{model} has no tensor {missing[0]} for the adapters in {adapters}")
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        _copy_metadata(reader, writer, gguf.LlamaFileType.MOSTLY_Q8_0)
        for t in reader.tensors:
            if t.name not in deltas:
                writer.add_tensor(t.name, np.asarray(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
                continue
            module, a, b = deltas[t.name]
            weight = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
            delta = scale * (b @ a)
            if delta.shape != weight.shape:
                raise ModelError(f"adapter {module} makes a {delta.shape} delta for {t.name} of {weight.shape}")
            if t.name.endswith("attn_q.weight"):
                delta = rope_permute(delta, n_head)
            elif t.name.endswith("attn_k.weight"):
                delta = rope_permute(delta, n_head_kv)
            merged = gguf.quants.quantize(weight + delta, MERGED_TYPE)
            writer.add_tensor(t.name, merged, raw_shape=merged.shape, raw_dtype=MERGED_TYPE)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
