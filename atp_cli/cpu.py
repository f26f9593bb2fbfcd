"""Facts about this machine's CPU that decide speed and correctness: model name, instruction sets, usable cores.

Machines that run atp differ (AVX2-only AMD EPYC, Intel Xeon with AVX-512, AVX512-BF16 and AMX), so every
benchmark figure and bug report names them; training uses bfloat16 only where the CPU computes it natively.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

# the instruction sets that select ggml's CPU variant or torch's bfloat16 path, in the order lscpu prints them
ISA_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512vbmi", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def model_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def isa_summary() -> str:
    """The instruction sets of ISA_FLAGS this CPU has, e.g. 'avx2 fma ... avx512_bf16' (or 'none reported')."""
    have = flags()
    return " ".join(f for f in ISA_FLAGS if f in have) or "none reported"


def has_native_bf16() -> bool:
    """Does the CPU multiply bfloat16 in hardware (AVX512-BF16 or AMX-BF16)? Elsewhere torch emulates it, tens of
    times slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & flags())


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe() -> str:
    """One line for a benchmark or bug report: model, usable cores and instruction sets."""
    return f"{model_name()} ({usable_cores()} cores; {isa_summary()})"
