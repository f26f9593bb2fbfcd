"""ATP configuration and weights in GGUF: written into (and read back from) the mmproj file.

llama.cpp's language-model loader rejects unknown tensors, while its mmproj loader fetches tensors by name
and ignores the rest, so `atp.*` keys and tensors live in the mmproj: stock llama.cpp still loads both files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from atp_cli.errors import InputError, ModelError
from atp_cli.gguf_keys import ATP_FORMAT_VERSION, Atp
from atp_cli.pruning.atp import ThresholdMLP
from atp_cli.pruning.config import N_FEATURES, AtpConfig

_MLP_PARTS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


@dataclass(frozen=True)
class AtpWeights:
    """Everything ATP needs at inference: the configuration plus trained MLPs and/or training-free levels."""

    config: AtpConfig
    mlps: tuple[ThresholdMLP, ...] = ()
    free_mass: tuple[float, ...] = ()
    free_stride: tuple[int, ...] = ()

    def validate(self, n_layer: int | None = None) -> None:
        self.config.validate(n_layer)
        n = len(self.config.boundaries)
        if self.mlps and len(self.mlps) != n:
            raise InputError(f"{len(self.mlps)} threshold MLPs for {n} modules")
        if self.free_mass and (len(self.free_mass) != n or len(self.free_stride) != n):
            raise InputError(f"training-free levels must have one entry per module ({n})")
        if not self.mlps and not self.free_mass:
            raise InputError("ATP weights hold neither threshold MLPs nor training-free levels")


def add_to_writer(writer: gguf.GGUFWriter, weights: AtpWeights) -> None:
    """Queue the atp.* keys and tensors on a writer (before its header is written)."""
    weights.validate()
    c = weights.config
    writer.add_uint32(Atp.FORMAT_VERSION, ATP_FORMAT_VERSION)
    writer.add_uint32(Atp.N_LAYER, c.n_layer)
    writer.add_array(Atp.BOUNDARIES, [int(b) for b in c.boundaries])
    writer.add_array(Atp.SAP_STRIDES, [int(s) for s in c.strides])
    writer.add_float32(Atp.SAP_LAMBDA, c.lam)
    writer.add_float32(Atp.TEMPERATURE, c.temperature)
    writer.add_uint32(Atp.MLP_HIDDEN, c.hidden)
    writer.add_uint32(Atp.MLP_FEATURES, N_FEATURES)
    writer.add_bool(Atp.HAS_MLP, bool(weights.mlps))
    if c.grid is not None:
        writer.add_array(Atp.GRID, [int(c.grid[0]), int(c.grid[1])])
    if weights.free_mass:
        writer.add_array(Atp.FREE_MASS, [float(x) for x in weights.free_mass])
        writer.add_array(Atp.FREE_STRIDE, [int(x) for x in weights.free_stride])
    for m, mlp in enumerate(weights.mlps):
        for part, arr in zip(_MLP_PARTS, (mlp.fc1_w, mlp.fc1_b, mlp.fc2_w, mlp.fc2_b)):
            writer.add_tensor(Atp.mlp_tensor(m, part), np.ascontiguousarray(arr, dtype=np.float32))


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def read_atp(path: str | Path) -> AtpWeights | None:
    """The ATP weights stored in a GGUF file, or None if it has none."""
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path} as GGUF: {e}") from e
    version = _field(reader, Atp.FORMAT_VERSION)
    if version is None:
        return None
    if version != ATP_FORMAT_VERSION:
        raise ModelError(f"{path}: ATP format version {version}, this atp reads {ATP_FORMAT_VERSION}")
    grid = _field(reader, Atp.GRID)
    config = AtpConfig(
        n_layer=int(_field(reader, Atp.N_LAYER)),
        boundaries=tuple(int(b) for b in _field(reader, Atp.BOUNDARIES)),
        strides=tuple(int(s) for s in _field(reader, Atp.SAP_STRIDES)),
        lam=float(_field(reader, Atp.SAP_LAMBDA)),
        temperature=float(_field(reader, Atp.TEMPERATURE)),
        grid=None if grid is None else (int(grid[0]), int(grid[1])),
        hidden=int(_field(reader, Atp.MLP_HIDDEN)),
    )
    tensors = {t.name: t for t in reader.tensors if t.name.startswith("atp.")}
    mlps = []
    if _field(reader, Atp.HAS_MLP):
        for m in range(len(config.boundaries)):
            parts = []
            for part in _MLP_PARTS:
                t = tensors.get(Atp.mlp_tensor(m, part))
                if t is None:
                    raise ModelError(f"{path}: missing tensor {Atp.mlp_tensor(m, part)}")
                parts.append(np.array(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist()))))
            mlps.append(ThresholdMLP(*parts))
    mass = _field(reader, Atp.FREE_MASS)
    stride = _field(reader, Atp.FREE_STRIDE)
    weights = AtpWeights(
        config,
        tuple(mlps),
        tuple(float(x) for x in mass) if mass is not None else (),
        tuple(int(x) for x in stride) if stride is not None else (),
    )
    weights.validate()
    return weights


def attach_atp(gguf_path: str | Path, weights: AtpWeights) -> None:
    """Add or replace the ATP weights of an existing GGUF file (rewritten to a temporary name, then renamed)."""
    gguf_path = Path(gguf_path)
    weights.validate()
    reader = gguf.GGUFReader(gguf_path)
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE) or "clip"
    tmp = gguf_path.with_name(gguf_path.name + ".part")
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith(("GGUF.", "atp.")):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        for t in reader.tensors:
            if not t.name.startswith("atp."):
                writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type, tensor_endianess=reader.endianess)
        add_to_writer(writer, weights)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        del reader
        os.replace(tmp, gguf_path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(weights: AtpWeights, path: str | Path) -> None:
    """The training output format: MLP tensors plus the configuration as safetensors metadata (atomic)."""
    import json

    from safetensors.numpy import save_file

    weights.validate()
    c = weights.config
    meta = {
        "atp_config": json.dumps({"n_layer": c.n_layer, "boundaries": list(c.boundaries), "strides": list(c.strides),
                                  "lam": c.lam, "temperature": c.temperature,
                                  "grid": list(c.grid) if c.grid else None, "hidden": c.hidden}),
        "free_mass": json.dumps(list(weights.free_mass)),
        "free_stride": json.dumps(list(weights.free_stride)),
    }
    tensors = {}
    for m, mlp in enumerate(weights.mlps):
        for part, arr in zip(_MLP_PARTS, (mlp.fc1_w, mlp.fc1_b, mlp.fc2_w, mlp.fc2_b)):
            tensors[f"m{m}.{part}"] = np.ascontiguousarray(arr, dtype=np.float32)
    if not tensors:
        tensors["empty"] = np.zeros(1, np.float32)
    tmp = Path(f"{path}.part")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_safetensors(path: str | Path) -> AtpWeights:
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read ATP weights from {path}: {e}") from e
    if "atp_config" not in meta:
        raise InputError(f"{path} holds no ATP configuration (not written by `atp train`/`atp calibrate`)")
    cfg = json.loads(meta["atp_config"])
    config = AtpConfig(n_layer=cfg["n_layer"], boundaries=tuple(cfg["boundaries"]), strides=tuple(cfg["strides"]),
                       lam=cfg["lam"], temperature=cfg["temperature"],
                       grid=tuple(cfg["grid"]) if cfg.get("grid") else None, hidden=cfg["hidden"])
    mlps = []
    m = 0
    while f"m{m}.fc1.weight" in tensors:
        mlps.append(ThresholdMLP(*(tensors[f"m{m}.{part}"] for part in _MLP_PARTS)))
        m += 1
    weights = AtpWeights(config, tuple(mlps), tuple(json.loads(meta.get("free_mass", "[]"))),
                         tuple(json.loads(meta.get("free_stride", "[]"))))
    weights.validate()
    return weights
