"""Quantize a GGUF language model with llama.cpp's own quantizer (K-quants included)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from llama_cpp import llama_cpp as llama

from atp_cli.cpu import usable_cores
from atp_cli.errors import InputError, ModelError

# enum llama_ftype (include/llama.h)
FTYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_m": 12,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
    "bf16": 32,
}


def quantize_gguf(src: Path, dst: Path, outtype: str, n_threads: int = 0) -> Path:
    """Write `dst` (atomically: a temporary name, renamed when complete) quantized to `outtype`."""
    if outtype not in FTYPES:
        raise InputError(f"unknown output type {outtype!r}; choose one of {', '.join(FTYPES)}")
    if not Path(src).is_file():
        raise ModelError(f"no model at {src}")
    if Path(dst).resolve() == Path(src).resolve():
        raise InputError("quantizing in place would overwrite the input")
    tmp = Path(f"{dst}.part")
    params = llama.llama_model_quantize_default_params()
    params.ftype = FTYPES[outtype]
    params.nthread = n_threads or usable_cores()
    try:
        rc = llama.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise ModelError(f"llama_model_quantize failed ({rc}) for {src} -> {outtype}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return Path(dst)
