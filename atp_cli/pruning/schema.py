"""The schema of the `atp.*` metadata: one table of keys with their type, range and length, and the checks that
tie them to each other, to the stored tensors, to the model's depth and to the visual grid.

Applied when ATP weights are read (GGUF or safetensors) and before they are written or attached, so that a bad
file is refused with the key, the value seen and what was expected - instead of a module that keeps one token of
576, or a traceback. Nothing here touches a file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from atp_cli.errors import InputError
from atp_cli.gguf_keys import ATP_FORMAT_VERSION, Atp

MAX_LAYERS = 1024
MAX_HIDDEN = 4096
MAX_GRID = 1024
MAX_WEIGHT = 1e3  # |w| of a threshold MLP: trained ones are O(1); far larger ones saturate every threshold


class SchemaError(InputError):
    """ATP metadata that breaks the schema."""


@dataclass(frozen=True)
class Field:
    key: str
    kind: str  # "int", "float", "bool", "ints", "floats"
    check: Callable[[object], bool]
    expected: str
    required: bool = True


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: object) -> bool:
    return (_is_int(x) or isinstance(x, (float, np.floating))) and math.isfinite(float(x))


def _ints(lo: int, hi: int, n: tuple[int, int]) -> Callable[[object], bool]:
    return lambda v: (isinstance(v, (list, tuple)) and n[0] <= len(v) <= n[1]
                      and all(_is_int(x) and lo <= int(x) <= hi for x in v))


FIELDS = (
    Field(Atp.FORMAT_VERSION, "int", lambda v: _is_int(v) and v == ATP_FORMAT_VERSION,
          f"the integer {ATP_FORMAT_VERSION} (the format this atp reads)"),
    Field(Atp.N_LAYER, "int", lambda v: _is_int(v) and 2 <= v <= MAX_LAYERS, f"an integer in [2, {MAX_LAYERS}]"),
    Field(Atp.BOUNDARIES, "ints", _ints(1, MAX_LAYERS - 1, (1, 64)), "1 to 64 integer layers"),
    Field(Atp.SAP_STRIDES, "ints", _ints(2, MAX_GRID, (1, 32)), f"1 to 32 integer strides in [2, {MAX_GRID}]"),
    Field(Atp.SAP_LAMBDA, "float", lambda v: _is_real(v) and 0 <= float(v) <= 1e3, "a finite number in [0, 1000]"),
    Field(Atp.TEMPERATURE, "float", lambda v: _is_real(v) and 0 < float(v) <= 1e4, "a finite number in (0, 1e4]"),
    Field(Atp.GRID, "ints", _ints(1, MAX_GRID, (2, 2)), f"two integers [H, W] in [1, {MAX_GRID}]", required=False),
    Field(Atp.MLP_HIDDEN, "int", lambda v: _is_int(v) and 1 <= v <= MAX_HIDDEN, f"an integer in [1, {MAX_HIDDEN}]"),
    Field(Atp.MLP_FEATURES, "int", lambda v: _is_int(v), "an integer", required=False),
    Field(Atp.HAS_MLP, "bool", lambda v: isinstance(v, (bool, np.bool_)), "true or false", required=False),
    Field(Atp.FREE_MASS, "floats", lambda v: isinstance(v, (list, tuple)) and 1 <= len(v) <= 64
          and all(_is_real(x) and 0 < float(x) <= 1 for x in v), "1 to 64 numbers in (0, 1]", required=False),
    Field(Atp.FREE_STRIDE, "ints", lambda v: _ints(0, MAX_GRID, (1, 64))(v) and 1 not in [int(x) for x in v],
          "1 to 64 integers, each 0 (no grid) or >= 2", required=False),
    Field(Atp.DEBIAS, "bool", lambda v: isinstance(v, (bool, np.bool_)), "true or false", required=False),
    Field(Atp.OP_BUDGETS, "floats", lambda v: isinstance(v, (list, tuple)) and 1 <= len(v) <= 16
          and all(_is_real(x) and 0 < float(x) <= 1e6 for x in v) and len({round(float(x), 3) for x in v}) == len(v),
          "1 to 16 distinct positive numbers", required=False),
    Field(Atp.OP_PRE_KEEP, "ints", _ints(1, 1 << 20, (1, 16)), "1 to 16 positive integers", required=False),
)


def check_fields(values: Mapping[str, object], where: str) -> dict[str, object]:
    """Every field of `values` (key -> value as read, None when absent) against the table; returns the present ones.

    Raises SchemaError naming the key, the value seen and what was expected."""
    out = {}
    for f in FIELDS:
        value = values.get(f.key)
        if value is None:
            if f.required:
                raise SchemaError(f"{where}: {f.key} is missing; expected {f.expected}")
            continue
        if not f.check(value):
            raise SchemaError(f"{where}: {f.key} = {_show(value)}; expected {f.expected}")
        out[f.key] = value
    return out


def _show(value: object) -> str:
    """A value as a user would write it: float32 noise rounded away (0.6, not 0.6000000238418579)."""
    def fmt(v: object) -> str:
        if isinstance(v, (list, tuple, np.ndarray)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.7g}"
        return repr(v)

    text = fmt(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_consistency(boundaries: tuple[int, ...], n_layer: int, strides: tuple[int, ...], n_mlps: int,
                      free_mass: tuple[float, ...], free_stride: tuple[int, ...], where: str) -> None:
    """The relations between fields: boundaries inside the depth, one MLP and one level per module."""
    b = list(boundaries)
    if b != sorted(set(b)) or b[0] <= 0 or b[-1] >= n_layer:
        raise SchemaError(f"{where}: {Atp.BOUNDARIES} = {b}; expected strictly increasing layers inside "
                          f"(0, {n_layer}) ({Atp.N_LAYER} = {n_layer})")
    if n_mlps and n_mlps != len(b):
        raise SchemaError(f"{where}: {n_mlps} threshold MLPs for {len(b)} modules ({Atp.BOUNDARIES} = {b})")
    if (free_mass or free_stride) and not len(free_mass) == len(free_stride) == len(b):
        raise SchemaError(f"{where}: {Atp.FREE_MASS} has {len(free_mass)} and {Atp.FREE_STRIDE} {len(free_stride)} "
                          f"entries; expected one per module ({len(b)})")
    if not n_mlps and not free_mass:
        raise SchemaError(f"{where}: neither threshold MLPs nor training-free levels ({Atp.FREE_MASS})")
    if not strides:
        raise SchemaError(f"{where}: {Atp.SAP_STRIDES} is empty")


def check_operating_points(budgets: tuple[float, ...], pre_keep: tuple[int, ...], has_mlps: bool, where: str,
                           n_visual: int | None = None) -> None:
    """One pre-LLM count per named budget, trained modules to run after it, and no count above the visual tokens."""
    if not budgets and not pre_keep:
        return
    if len(budgets) != len(pre_keep):
        raise SchemaError(f"{where}: {Atp.OP_BUDGETS} has {len(budgets)} and {Atp.OP_PRE_KEEP} {len(pre_keep)} "
                          "entries; expected one pre-LLM count per budget")
    if not has_mlps:
        raise SchemaError(f"{where}: operating points ({Atp.OP_BUDGETS}) need trained threshold MLPs")
    if n_visual is not None and max(pre_keep) > n_visual:
        raise SchemaError(f"{where}: {Atp.OP_PRE_KEEP} = {list(pre_keep)} keeps more than the {n_visual} visual "
                          "tokens")


def check_mlp_arrays(arrays: tuple[np.ndarray, ...], hidden: int, n_features: int, name: str) -> None:
    """One module's (fc1.weight, fc1.bias, fc2.weight, fc2.bias): shapes from the metadata, finite, bounded."""
    expected = [(hidden, n_features), (hidden,), (2, hidden), (2,)]
    shapes = [tuple(a.shape) for a in arrays]
    if shapes != expected:
        raise SchemaError(f"{name}: tensor shapes {shapes}; expected {expected} ({Atp.MLP_HIDDEN} = {hidden})")
    for part, a in zip(("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"), arrays):
        if not np.isfinite(a).all():
            raise SchemaError(f"{name}.{part} holds NaN or inf")
        if np.abs(a).max(initial=0.0) > MAX_WEIGHT:
            raise SchemaError(f"{name}.{part} holds |w| = {float(np.abs(a).max()):.3g}; expected <= {MAX_WEIGHT:g}")


def check_grid(grid: tuple[int, int] | None, n_visual: int, where: str) -> None:
    """The stored visual grid must tile the model's visual tokens exactly."""
    if grid is None:
        side = math.isqrt(n_visual)
        if side * side != n_visual:
            raise SchemaError(f"{where}: {n_visual} visual tokens are not a square grid and {Atp.GRID} is not set")
        return
    if grid[0] * grid[1] != n_visual:
        raise SchemaError(f"{where}: {Atp.GRID} = {list(grid)} holds {grid[0] * grid[1]} tokens; the vision "
                          f"projector gives {n_visual}")
