"""What the loaded ggml CPU backend is: its library (the variant ggml chose for this CPU), the instruction sets
it was compiled for, and its extra buffer types.

These answer the questions a bug report needs and the AMX guard tests ask: ggml's AMX matrix multiply
crashes on Sapphire Rapids (docs/ARCHITECTURE.md, "CPU variants and AMX"), and it is in use exactly when
the CPU backend reports `AMX_INT8` or offers the `AMX` buffer type. Stock ggml symbols only; the patched
ones are bound in `native.py`.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llama_cpp import llama_cpp as llama

from atp_cli.errors import NativeLibraryError

GGML_BACKEND_DEVICE_TYPE_CPU = 0  # enum ggml_backend_dev_type


@dataclass(frozen=True)
class CpuBackend:
    """The CPU backend as loaded in this process."""

    library: str  # the shared object ggml loaded, e.g. .../libggml-cpu-zen4.so
    variant: str  # the part after libggml-cpu-, or "" for a single-variant build
    features: dict[str, str]  # llama_print_system_info's CPU section: {"AVX2": "1", "AVX512_BF16": "1", ...}
    buffer_types: tuple[str, ...]  # extra buffer types of the CPU device, e.g. ("CPU_REPACK",)
    ggml_version: str
    ggml_commit: str

    @property
    def uses_amx(self) -> bool:
        return self.features.get("AMX_INT8") == "1" or any("AMX" in b.upper() for b in self.buffer_types)

    def enabled_features(self) -> list[str]:
        return [name for name, value in self.features.items() if value not in ("0", "")]


def lib_dir() -> Path:
    """The folder of llama-cpp-python's shared libraries."""
    return Path(llama._lib._name).resolve().parent  # type: ignore[attr-defined]


def mapped_libraries() -> list[str]:
    """Paths of the shared objects mapped into this process (empty where /proc is not there)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if line.count(" ") >= 5 and ".so" in line}
    return sorted(p for p in paths if p.startswith("/"))


@lru_cache(maxsize=1)
def _ggml() -> ctypes.CDLL:
    """libggml (the backend registry) exactly as libllama loaded it, with the few symbols used here bound.

    A wheel stores libggml.so, libggml.so.0, ... as separate copies (wheels hold no symlinks): opening another copy
    than the one libllama linked would give a second, empty registry."""
    llama.llama_backend_init()
    loaded = [p for p in mapped_libraries() if re.fullmatch(r"libggml\.so(\.\d+)*", Path(p).name)]
    path = Path(loaded[0]) if loaded else lib_dir() / "libggml.so.0"
    if not path.is_file():
        raise NativeLibraryError(f"libggml is not loaded and not found beside libllama in {lib_dir()}")
    lib = ctypes.CDLL(str(path))
    vp = ctypes.c_void_p
    for name, restype, argtypes in (
        ("ggml_backend_dev_by_type", vp, [ctypes.c_int]),
        ("ggml_backend_dev_backend_reg", vp, [vp]),
        ("ggml_backend_reg_get_proc_address", vp, [vp, ctypes.c_char_p]),
        ("ggml_backend_buft_name", ctypes.c_char_p, [vp]),
        ("ggml_version", ctypes.c_char_p, []),
        ("ggml_commit", ctypes.c_char_p, []),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def system_info() -> str:
    """llama.cpp's own one-line summary of the backends and their compiled features."""
    llama.llama_backend_init()  # loads the backends of a GGML_BACKEND_DL build (idempotent)
    return llama.llama_print_system_info().decode("utf-8", errors="replace")


def parse_cpu_features(info: str) -> dict[str, str]:
    """The `CPU : A = 1 | B = 0 | ...` section of a system-info line as a dict."""
    features: dict[str, str] = {}
    in_cpu = False
    for part in info.split("|"):
        part = part.strip()
        if " : " in part:  # "CPU : SSE3 = 1" starts a backend's section
            section, part = part.split(" : ", 1)
            in_cpu = section.strip() == "CPU"
        if in_cpu and "=" in part:
            name, value = (x.strip() for x in part.split("=", 1))
            features[name] = value
    return features


def loaded_cpu_library() -> str:
    """The libggml-cpu*.so mapped into this process (the variant ggml chose), or "" if none is mapped."""
    return next((p for p in mapped_libraries() if Path(p).name.startswith("libggml-cpu")), "")


def _extra_buffer_types() -> tuple[str, ...]:
    lib = _ggml()
    dev = lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not dev:
        raise NativeLibraryError("ggml has no CPU backend loaded (no libggml-cpu*.so beside libggml.so?)")
    reg = lib.ggml_backend_dev_backend_reg(dev)
    addr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not addr:
        return ()
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
    bufts = get_extra(dev)
    names = []
    i = 0
    while bufts and bufts[i]:
        names.append(lib.ggml_backend_buft_name(bufts[i]).decode())
        i += 1
    return tuple(names)


def cpu_backend() -> CpuBackend:
    """Inspect the CPU backend of this process (loading it first if needed)."""
    features = parse_cpu_features(system_info())
    lib = _ggml()
    library = loaded_cpu_library()
    name = Path(library).name
    variant = name.removeprefix("libggml-cpu").removeprefix("-").split(".so")[0] if library else ""
    return CpuBackend(library=library, variant=variant, features=features, buffer_types=_extra_buffer_types(),
                      ggml_version=(lib.ggml_version() or b"").decode(),
                      ggml_commit=(lib.ggml_commit() or b"").decode())
