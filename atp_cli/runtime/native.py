"""Bindings for the entry points that `native_patch/` adds to libllama (`include/llama-atp.h`).

They are bound on the very library handle that `llama_cpp` loaded, so contexts made here and by
`llama_cpp` share one model and one ggml backend. Every symbol is checked once, at first use; a stock
llama-cpp-python build fails here with the list of what is missing instead of crashing later.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from types import SimpleNamespace

from llama_cpp import llama_cpp as llama

from atp_cli.errors import NativeLibraryError

ABI_VERSION = 1  # LLAMA_ATP_ABI_VERSION in native_patch/0002-atp-layer-range-segments.patch


class SegmentParams(ctypes.Structure):
    """struct llama_atp_segment_params."""

    _fields_ = [
        ("il_begin", ctypes.c_int32),
        ("il_end", ctypes.c_int32),
        ("allow_pos_gaps", ctypes.c_bool),
        ("attn_readout_il", ctypes.c_int32),
    ]


_c_float_p = ctypes.POINTER(ctypes.c_float)

# name -> (restype, argtypes); the C prototypes are in include/llama-atp.h
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    # int32_t llama_atp_abi_version(void)
    "llama_atp_abi_version": (ctypes.c_int32, []),
    # bool llama_atp_model_supported(const llama_model *)
    "llama_atp_model_supported": (ctypes.c_bool, [llama.llama_model_p_ctypes]),
    # llama_context * llama_atp_init_segment(llama_model *, llama_context_params, llama_atp_segment_params)
    "llama_atp_init_segment": (
        llama.llama_context_p_ctypes,
        [llama.llama_model_p_ctypes, llama.llama_context_params, SegmentParams],
    ),
    # void llama_atp_free(llama_context *)
    "llama_atp_free": (None, [llama.llama_context_p_ctypes]),
    # float * llama_atp_get_hidden(llama_context *)
    "llama_atp_get_hidden": (_c_float_p, [llama.llama_context_p_ctypes]),
    # bool llama_atp_attn_capture(llama_context *, bool armed)
    "llama_atp_attn_capture": (ctypes.c_bool, [llama.llama_context_p_ctypes, ctypes.c_bool]),
    # int32_t llama_atp_attn_rows(const llama_context *)
    "llama_atp_attn_rows": (ctypes.c_int32, [llama.llama_context_p_ctypes]),
    # int32_t llama_atp_attn_cols(const llama_context *)
    "llama_atp_attn_cols": (ctypes.c_int32, [llama.llama_context_p_ctypes]),
    # const float * llama_atp_attn_data(const llama_context *)
    "llama_atp_attn_data": (_c_float_p, [llama.llama_context_p_ctypes]),
    # int32_t llama_atp_kv_cell_pos(const llama_context *, llama_seq_id, llama_pos * out, int32_t n_max)
    "llama_atp_kv_cell_pos": (
        ctypes.c_int32,
        [llama.llama_context_p_ctypes, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32],
    ),
    # bool llama_atp_kv_stats(const llama_context *, int32_t * used, int32_t * total, uint64_t * bytes)
    "llama_atp_kv_stats": (
        ctypes.c_bool,
        [
            llama.llama_context_p_ctypes,
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(ctypes.c_uint64),
        ],
    ),
}


@lru_cache(maxsize=1)
def atp_lib() -> SimpleNamespace:
    """The bound atp entry points; raises NativeLibraryError naming what is missing."""
    lib = llama._lib
    missing = [name for name in _PROTOTYPES if not hasattr(lib, name)]
    if missing:
        raise NativeLibraryError(
            f"libllama at {getattr(lib, '_name', '?')} lacks the atp entry points {missing}; "
            f"install the patched llama-cpp-python (make wheel) for atp ABI {ABI_VERSION}"
        )
    bound = {}
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
        bound[name.removeprefix("llama_atp_")] = fn
    version = bound["abi_version"]()
    if version != ABI_VERSION:
        raise NativeLibraryError(f"libllama has atp ABI {version}, this driver needs {ABI_VERSION}; rebuild the wheel")
    return SimpleNamespace(**bound)
