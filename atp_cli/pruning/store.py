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

from atp_cli.errors import InputError
from atp_cli.gguf_keys import ATP_FORMAT_VERSION, Atp
from atp_cli.gguf_read import field_value, open_gguf
from atp_cli.pruning.atp import ThresholdMLP
from atp_cli.pruning import schema
from atp_cli.pruning.config import N_FEATURES, AtpConfig

_MLP_PARTS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


@dataclass(frozen=True)
class AtpWeights:
    """Everything ATP needs at inference: the configuration plus trained MLPs and/or training-free levels."""

    config: AtpConfig
    mlps: tuple[ThresholdMLP, ...] = ()
    free_mass: tuple[float, ...] = ()
    free_stride: tuple[int, ...] = ()
    budgets: tuple[float, ...] = ()  # operating points: named budgets, each with the rows kept before the LLM
    pre_keep: tuple[int, ...] = ()

    def operating_point(self, budget: float) -> int:
        """The rows kept before the LLM at the named `budget` (tokens averaged over layers, within half a token)."""
        for b, keep in zip(self.budgets, self.pre_keep):
            if abs(b - budget) <= 0.5:
                return keep
        have = ", ".join(f"{b:g}" for b in self.budgets) or "none"
        raise InputError(f"the ATP weights have no operating point at a budget of {budget:g} (stored: {have}); "
                         "atp calibrate --operating-points adds them")

    def metadata(self) -> dict[str, object]:
        """The atp.* keys as stored (absent optional keys left out): what is written and what the schema checks."""
        c = self.config
        meta: dict[str, object] = {
            Atp.FORMAT_VERSION: ATP_FORMAT_VERSION, Atp.N_LAYER: c.n_layer,
            Atp.BOUNDARIES: list(c.boundaries), Atp.SAP_STRIDES: list(c.strides),
            Atp.SAP_LAMBDA: c.lam, Atp.TEMPERATURE: c.temperature, Atp.MLP_HIDDEN: c.hidden,
            Atp.MLP_FEATURES: N_FEATURES, Atp.HAS_MLP: bool(self.mlps),
        }
        if c.grid is not None:
            meta[Atp.GRID] = list(c.grid)
        if c.debias:
            meta[Atp.DEBIAS] = True
        if self.free_mass or self.free_stride:
            meta[Atp.FREE_MASS], meta[Atp.FREE_STRIDE] = list(self.free_mass), list(self.free_stride)
        if self.budgets or self.pre_keep:
            meta[Atp.OP_BUDGETS], meta[Atp.OP_PRE_KEEP] = [float(b) for b in self.budgets], list(self.pre_keep)
        return meta

    def validate(self, n_layer: int | None = None, n_visual: int | None = None, where: str = "ATP weights") -> None:
        """The schema (atp_cli.pruning.schema), and when given the model's depth and visual token count."""
        schema.check_fields(self.metadata(), where)
        c = self.config
        schema.check_consistency(c.boundaries, c.n_layer, c.strides, len(self.mlps), self.free_mass,
                                 self.free_stride, where)
        schema.check_operating_points(self.budgets, self.pre_keep, bool(self.mlps), where, n_visual)
        for m, mlp in enumerate(self.mlps):
            schema.check_mlp_arrays((mlp.fc1_w, mlp.fc1_b, mlp.fc2_w, mlp.fc2_b), c.hidden, N_FEATURES,
                                    f"{where}: atp.m{m}")
        if n_layer is not None and n_layer != c.n_layer:
            raise schema.SchemaError(f"{where}: {Atp.N_LAYER} = {c.n_layer}; the language model has {n_layer} layers")
        if n_visual is not None:
            schema.check_grid(c.grid, n_visual, where)


def add_to_writer(writer: gguf.GGUFWriter, weights: AtpWeights) -> None:
    """Queue the atp.* keys and tensors on a writer (before its header is written)."""
    weights.validate()
    for key, value in weights.metadata().items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_array(key, value)
    for m, mlp in enumerate(weights.mlps):
        for part, arr in zip(_MLP_PARTS, (mlp.fc1_w, mlp.fc1_b, mlp.fc2_w, mlp.fc2_b)):
            writer.add_tensor(Atp.mlp_tensor(m, part), np.ascontiguousarray(arr, dtype=np.float32))


def _field(reader: gguf.GGUFReader, key: str):
    return field_value(reader, key, schema.SchemaError)


def weights_from_values(values: dict[str, object], mlp_arrays: list[tuple[np.ndarray, ...]], where: str) -> AtpWeights:
    """ATP weights from the atp.* values as read (key -> value or None) and each module's four arrays, checked
    against the schema before anything is built from them."""
    fields = schema.check_fields(values, where)
    if fields.get(Atp.MLP_FEATURES, N_FEATURES) != N_FEATURES:
        raise schema.SchemaError(f"{where}: {Atp.MLP_FEATURES} = {fields[Atp.MLP_FEATURES]}; this atp computes "
                                 f"{N_FEATURES} features")
    grid = fields.get(Atp.GRID)
    config = AtpConfig(
        n_layer=int(fields[Atp.N_LAYER]),
        boundaries=tuple(int(b) for b in fields[Atp.BOUNDARIES]),
        strides=tuple(int(s) for s in fields[Atp.SAP_STRIDES]),
        lam=float(fields[Atp.SAP_LAMBDA]),
        temperature=float(fields[Atp.TEMPERATURE]),
        grid=None if grid is None else (int(grid[0]), int(grid[1])),
        hidden=int(fields[Atp.MLP_HIDDEN]),
        debias=bool(fields.get(Atp.DEBIAS, False)),
    )
    free_mass = tuple(float(x) for x in fields.get(Atp.FREE_MASS, ()))
    free_stride = tuple(int(x) for x in fields.get(Atp.FREE_STRIDE, ()))
    schema.check_consistency(config.boundaries, config.n_layer, config.strides, len(mlp_arrays), free_mass,
                             free_stride, where)
    for m, arrays in enumerate(mlp_arrays):
        schema.check_mlp_arrays(arrays, config.hidden, N_FEATURES, f"{where}: atp.m{m}")
    budgets = tuple(float(x) for x in fields.get(Atp.OP_BUDGETS, ()))
    pre_keep = tuple(int(x) for x in fields.get(Atp.OP_PRE_KEEP, ()))
    weights = AtpWeights(config, tuple(ThresholdMLP(*a) for a in mlp_arrays), free_mass, free_stride, budgets,
                         pre_keep)
    weights.validate(where=where)
    return weights


def _tensor_array(t, where: str) -> np.ndarray:
    if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        raise schema.SchemaError(f"{where}: tensor {t.name} is stored as {t.tensor_type.name}; expected F32 or F16")
    return np.array(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))


def read_atp(path: str | Path) -> AtpWeights | None:
    """The ATP weights stored in a GGUF file, or None if it has none; raises SchemaError for a broken set."""
    reader = open_gguf(path)
    where = str(path)
    values = {f.key: _field(reader, f.key) for f in schema.FIELDS}
    if values[Atp.FORMAT_VERSION] is None:
        if any(v is not None for v in values.values()):
            raise schema.SchemaError(f"{where}: atp.* keys without {Atp.FORMAT_VERSION}")
        return None
    schema.check_fields(values, where)  # the keys first: the tensors are read by what they say
    tensors = {t.name: t for t in reader.tensors if t.name.startswith("atp.")}
    n_modules = len(values[Atp.BOUNDARIES])
    mlp_arrays = []
    if values[Atp.HAS_MLP]:
        for m in range(n_modules):
            names = [Atp.mlp_tensor(m, part) for part in _MLP_PARTS]
            missing = [n for n in names if n not in tensors]
            if missing:
                raise schema.SchemaError(f"{where}: {missing[0]} is missing ({Atp.BOUNDARIES} has {n_modules} modules)")
            mlp_arrays.append(tuple(_tensor_array(tensors[n], where) for n in names))
    expected = {Atp.mlp_tensor(m, part) for m in range(len(mlp_arrays)) for part in _MLP_PARTS}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise schema.SchemaError(f"{where}: ATP tensors {extra[:4]} do not belong to the {n_modules} modules of "
                                 f"{Atp.BOUNDARIES} (or {Atp.HAS_MLP} is false)")
    return weights_from_values(values, mlp_arrays, where)


def attach_atp(gguf_path: str | Path, weights: AtpWeights) -> None:
    """Add or replace the ATP weights of an existing GGUF file (rewritten to a temporary name, then renamed)."""
    gguf_path = Path(gguf_path)
    weights.validate()
    reader = open_gguf(gguf_path)
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
    except OSError as e:  # a full disk, a read-only folder: the file in place is untouched
        raise InputError(f"cannot write the ATP weights into {gguf_path}: {e}") from e
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
                                  "grid": list(c.grid) if c.grid else None, "hidden": c.hidden,
                                  "debias": c.debias}),
        "free_mass": json.dumps(list(weights.free_mass)),
        "free_stride": json.dumps(list(weights.free_stride)),
        "operating_points": json.dumps([list(weights.budgets), list(weights.pre_keep)]),
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
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InputError(f"cannot read ATP weights from {path}: {e}") from e
    if "atp_config" not in meta:
        raise InputError(f"{path} holds no ATP configuration (not written by `atp train`/`atp calibrate`)")
    try:
        cfg = json.loads(meta["atp_config"])
        free_mass, free_stride = json.loads(meta.get("free_mass", "[]")), json.loads(meta.get("free_stride", "[]"))
        budgets, pre_keep = json.loads(meta.get("operating_points", "[[], []]"))
    except json.JSONDecodeError as e:
        raise schema.SchemaError(f"{path}: the ATP metadata is not JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise schema.SchemaError(f"{path}: atp_config = {cfg!r}; expected a JSON object")
    names = {"n_layer": Atp.N_LAYER, "boundaries": Atp.BOUNDARIES, "strides": Atp.SAP_STRIDES, "lam": Atp.SAP_LAMBDA,
             "temperature": Atp.TEMPERATURE, "grid": Atp.GRID, "hidden": Atp.MLP_HIDDEN, "debias": Atp.DEBIAS}
    values: dict[str, object] = {key: cfg.get(name) for name, key in names.items()}
    values[Atp.FORMAT_VERSION] = ATP_FORMAT_VERSION
    values[Atp.FREE_MASS], values[Atp.FREE_STRIDE] = free_mass or None, free_stride or None
    values[Atp.OP_BUDGETS], values[Atp.OP_PRE_KEEP] = budgets or None, pre_keep or None
    mlp_arrays = []
    while f"m{len(mlp_arrays)}.fc1.weight" in tensors:
        m = len(mlp_arrays)
        missing = [p for p in _MLP_PARTS if f"m{m}.{p}" not in tensors]
        if missing:
            raise schema.SchemaError(f"{path}: m{m}.{missing[0]} is missing")
        mlp_arrays.append(tuple(np.asarray(tensors[f"m{m}.{p}"], dtype=np.float32) for p in _MLP_PARTS))
    return weights_from_values(values, mlp_arrays, str(path))
