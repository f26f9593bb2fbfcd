"""LoRA adapters of the language model as a small file, and their merge into plain weights.

Training injects peft adapters; what the default model commits is only the low-rank factors (a few MB) plus the
scale. Assembly merges W += scale * B @ A into the dense weights, so llama.cpp runs an ordinary model and the
segmented runtime needs no adapter support.
"""

from __future__ import annotations

from pathlib import Path

import torch

from atp_cli.errors import ModelError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def inject(language_model: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Add trainable rank-`rank` adapters (scale 1: alpha = rank) to every linear layer; returns their parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TARGETS)), language_model)
    return [p for n, p in language_model.named_parameters() if "lora_" in n]


def save(language_model: torch.nn.Module, path: Path) -> None:
    """Write the adapter factors as `<module>.lora_A.weight` / `.lora_B.weight` (atomically)."""
    from safetensors.torch import save_file

    state = {n.replace(".default", ""): p.detach().cpu().contiguous()
             for n, p in language_model.named_parameters() if "lora_" in n}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata={"scale": "1.0"})
    tmp.replace(path)


def export(src: Path, dst: Path) -> Path:
    """The artifact form of an adapter file: the factors in float16 (half the size; their rounding, about 5e-4
    relative, is far below the q8_0 rounding of the merged weights), metadata kept; written atomically. Training
    snapshots stay float32, so that a resumed run equals an uninterrupted one."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).to(torch.float16).contiguous() for k in f.keys()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(dst)
    return dst


def load(language_model: torch.nn.Module, path: Path) -> int:
    """Copy the factors stored in `path` into the adapters `inject` added (same rank), to continue training them;
    returns how many tensors were loaded. Every adapter must be in the file, with its shape."""
    from safetensors.torch import load_file

    stored = load_file(str(path))
    params = {n.replace(".default", ""): p for n, p in language_model.named_parameters() if "lora_" in n}
    if set(stored) != set(params):
        raise ModelError(f"{path}: its adapters are not the ones of this language model")
    for name, param in params.items():
        if stored[name].shape != param.shape:
            raise ModelError(f"{path}: adapter {name} has shape {tuple(stored[name].shape)}, expected "
                             f"{tuple(param.shape)} (another rank?)")
        with torch.no_grad():
            param.copy_(stored[name])
    return len(params)


def merge(language_model: torch.nn.Module, path: Path) -> int:
    """Add the adapters stored in `path` into the dense weights of `language_model`; returns how many were merged."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        scale = float((f.metadata() or {}).get("scale", "1.0"))
        factors = {k: f.get_tensor(k) for k in f.keys()}
    modules = dict(language_model.named_modules())
    merged = 0
    for key_a, a in factors.items():
        if not key_a.endswith(".lora_A.weight"):
            continue
        name = key_a[: -len(".lora_A.weight")]
        b = factors.get(f"{name}.lora_B.weight")
        target = modules.get(name)
        if b is None or not isinstance(target, torch.nn.Linear) or target.weight.shape != (b.shape[0], a.shape[1]):
            raise ModelError(f"{path}: adapter {name} does not fit this language model")
        with torch.no_grad():
            target.weight += scale * (b.float() @ a.float())
        merged += 1
    if merged == 0:
        raise ModelError(f"{path} holds no LoRA adapters")
    return merged
