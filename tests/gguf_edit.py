"""Test helper: copy a GGUF file with some keys replaced, added or dropped and some tensors replaced or dropped
(to make the broken files a user might have)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

DROP = object()  # as a key's new value: leave the key out


def rewrite_gguf(src: Path, dst: Path, keys: dict[str, object] | None = None,
                 tensors: dict[str, object] | None = None) -> Path:
    """`keys`: name -> value (typed by Python type: bool, int -> uint32, negative int -> int32, float -> float32,
    str, list of int/float/str) or DROP. `tensors`: name -> numpy array or DROP."""
    keys, tensors = dict(keys or {}), dict(tensors or {})
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        if field.name in keys:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for name, value in keys.items():
        if value is not DROP:
            add_key(writer, name, value)
    for t in reader.tensors:
        if t.name in tensors:
            continue
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type, tensor_endianess=reader.endianess)
    for name, arr in tensors.items():
        if arr is not DROP:
            writer.add_tensor(name, np.ascontiguousarray(arr))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def add_key(writer: gguf.GGUFWriter, name: str, value: object) -> None:
    if isinstance(value, bool):
        writer.add_bool(name, value)
    elif isinstance(value, int):
        (writer.add_uint32 if value >= 0 else writer.add_int32)(name, value)
    elif isinstance(value, float):
        writer.add_float32(name, value)
    elif isinstance(value, str):
        writer.add_string(name, value)
    else:
        writer.add_array(name, list(value))
