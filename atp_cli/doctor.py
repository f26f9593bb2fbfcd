"""`atp doctor`: what a bug report needs, and whether this installation can run at all.

Everything is gathered defensively: a missing or stock native library is a finding to report (with a non-zero
exit), never a traceback. Findings that make atp unusable or unsafe are `problems`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from atp_cli import cpu
from atp_cli.paths import cache_root
from atp_cli.units import human_bytes


@dataclass
class Report:
    facts: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        width = max(len(k) for k in self.facts) if self.facts else 0
        out = [f"{key.ljust(width)}  {_show(value)}" for key, value in self.facts.items()]
        out += [f"problem: {p}" for p in self.problems]
        return out


def _show(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "-"
    return str(value)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def folder_size(path: Path) -> int:
    """Bytes in the regular files below `path` (links not followed); 0 if it does not exist."""
    if not path.is_dir():
        return 0
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def _native(report: Report) -> None:
    """llama-cpp-python, the atp patch ABI and the CPU backend ggml chose."""
    try:
        import llama_cpp  # noqa: F401  (loads libllama)
    except Exception as e:  # a broken wheel raises OSError, RuntimeError, ...: all are findings
        report.facts["llama-cpp-python"] = f"{_version('llama_cpp_python')} (cannot load: {e})"
        report.problems.append("the native library cannot be loaded: run `make setup` (or install the patched "
                               "wheel: native_patch/build_wheel.py)")
        return
    from atp_cli.errors import NativeLibraryError
    from atp_cli.runtime import backend
    from atp_cli.runtime.native import ABI_VERSION, atp_lib

    report.facts["llama-cpp-python"] = f"{_version('llama_cpp_python')} at {backend.lib_dir()}"
    try:
        report.facts["atp patch ABI"] = f"{int(atp_lib().abi_version())} (this atp needs {ABI_VERSION})"
    except NativeLibraryError as e:
        report.facts["atp patch ABI"] = "missing"
        report.problems.append(str(e))
    try:
        be = backend.cpu_backend()
    except NativeLibraryError as e:
        report.problems.append(str(e))
        return
    report.facts["ggml"] = f"{be.ggml_version} ({be.ggml_commit})"
    report.facts["CPU backend"] = f"{be.variant or 'single build'}: {be.library or '(statically linked)'}"
    report.facts["backend features"] = be.enabled_features()
    report.facts["extra buffer types"] = list(be.buffer_types)
    if be.uses_amx:
        report.problems.append("the CPU backend uses ggml's AMX path, which crashes on Sapphire Rapids (llama.cpp "
                               "issue 20824): rebuild the wheel with native_patch/build_wheel.py")


def _torch(report: Report) -> None:
    if importlib.util.find_spec("torch") is None:
        report.facts["torch"] = "not installed (needed only for training and checkpoint conversion)"
        return
    report.facts["torch"] = _version("torch")


def collect() -> Report:
    report = Report()
    report.facts["atp"] = f"{_version('atp')} ({Path(__file__).resolve().parent})"
    report.facts["python"] = f"{platform.python_version()} ({sys.executable})"
    report.facts["platform"] = platform.platform()
    report.facts["CPU"] = cpu.model_name()
    report.facts["CPU instruction sets"] = cpu.isa_summary()
    report.facts["threads"] = f"{cpu.usable_cores()} (the usable cores; --threads overrides)"
    report.facts["native bfloat16"] = "yes" if cpu.has_native_bf16() else "no (training stays in float32)"
    _native(report)
    _torch(report)
    root = cache_root()
    report.facts["cache"] = f"{root} ({human_bytes(folder_size(root))})"
    if root.is_dir():
        report.facts["cache folders"] = {p.name: human_bytes(folder_size(p)) for p in sorted(root.iterdir()) if p.is_dir()}
    return report
