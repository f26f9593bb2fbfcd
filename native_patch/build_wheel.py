#!/usr/bin/env python3
"""Build (or reuse) the patched llama-cpp-python wheel.

The sdist is fetched from the package index by exact version and checked against its sha256; the numbered
patches in this folder are applied in order; the CPU wheel is built once and cached under a key made of
what the wheel depends on (the patch contents, the sdist hash, the build flags, the Python tag, the machine
architecture; and, only where a native build is the fallback, this CPU's instruction-set flags), so a
second set-up reuses it. Prints the wheel's path as the last line of output. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import re
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
# the sdist every pinned version is built from, by its sha256 (a pin without its hash here is refused)
SDIST_SHA256S = {"0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"}


def pinned_version(pyproject: Path = Path(__file__).resolve().parents[1] / "pyproject.toml") -> str:
    """The llama-cpp-python version pyproject.toml pins: the one place the version is written."""
    found = re.findall(r'"llama-cpp-python==([0-9][0-9A-Za-z.]*)"', pyproject.read_text(encoding="utf-8"))
    if len(found) != 1:
        sys.exit(f"{pyproject} must pin llama-cpp-python exactly once (\"llama-cpp-python==X.Y.Z\"), found {found}")
    if found[0] not in SDIST_SHA256S:
        sys.exit(f"llama-cpp-python {found[0]} is pinned in {pyproject} but its sdist hash is not in SDIST_SHA256S")
    return found[0]


SDIST_VERSION = pinned_version()
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = SDIST_SHA256S[SDIST_VERSION]
COMMON_ARGS = "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
# Every build flag of the wheel is here. On x86-64 the wheel is portable: GGML_BACKEND_DL with
# GGML_CPU_ALL_VARIANTS builds the CPU backend once per instruction-set level and ggml picks the best
# one this CPU supports at run time (x64, haswell, alderlake, skylakex, cascadelake, icelake, zen4: the
# list in 0006-portable-cpu-variants-without-amx.patch). No variant enables AMX: ggml's AMX matrix
# multiply segfaults on Sapphire Rapids (llama.cpp issue 20824), and GGML_NATIVE=ON would switch it on
# by itself on any AMX CPU. To re-enable AMX once upstream fixes it, add the sapphirerapids variant
# back to that patch (and to its install list) - see docs/ARCHITECTURE.md, "CPU variants and AMX".
PORTABLE_ARGS = f"-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON {COMMON_ARGS}"
# Elsewhere (aarch64, ...) the wheel is built for this machine's CPU; AMX does not exist there.
NATIVE_ARGS = f"-DGGML_NATIVE=ON {COMMON_ARGS}"
PORTABLE_MACHINES = ("x86_64", "AMD64")

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[atp-wheel] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("ATP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "atp"
    )
    return Path(base)


def patches() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9][0-9][0-9]-*.patch"))


def cpu_flags() -> str:
    """The instruction-set flags of this CPU: a GGML_NATIVE build is only valid on the same set."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def is_portable(native: bool = False) -> bool:
    """Whether the wheel gets the run-time-dispatched CPU variants (x86-64) or is built for this CPU (elsewhere,
    or on request: `--native` builds the comparison wheel of scripts/bench_native_build.py)."""
    return not native and platform.machine() in PORTABLE_MACHINES


def cmake_args(native: bool = False) -> str:
    return PORTABLE_ARGS if is_portable(native) else NATIVE_ARGS


def build_key(native: bool = False) -> str:
    """What the wheel depends on: a portable wheel does not depend on the CPU it was built on."""
    h = hashlib.sha256()
    for p in patches():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    parts = [SDIST_SHA256, cmake_args(native), sys.implementation.cache_tag, platform.machine()]
    if not is_portable(native):
        parts.append(cpu_flags())
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(cache: Path) -> Path:
    """The pinned sdist, downloaded once by exact version and verified by hash."""
    target = cache / "sdist" / SDIST_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            log(f"downloading {SDIST_NAME}=={SDIST_VERSION} sdist")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"{SDIST_NAME}=={SDIST_VERSION}", "-d", tmp],
                check=True, stdout=sys.stderr,
            )
            os.replace(Path(tmp) / SDIST_FILE, target)
    digest = sha256_of(target)
    if digest != SDIST_SHA256:
        target.unlink()
        raise SystemExit(f"sdist hash mismatch: expected {SDIST_SHA256}, got {digest} (file removed)")
    return target


def apply_patches(src: Path) -> None:
    for p in patches():
        log(f"applying {p.name}")
        subprocess.run(["patch", "-p1", "--forward", "--batch", "-s", "-i", str(p)], cwd=src, check=True,
                       stdout=sys.stderr)


TOOLS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def tools_dir(cache: Path) -> Path:
    """Where llama.cpp's own HF->GGUF converter of the pinned version is unpacked (used by `atp convert`)."""
    return cache / "tools" / f"llama-cpp-python-{SDIST_VERSION}"


def extract_tools(cache: Path) -> Path:
    """Unpack the converter scripts from the pinned sdist once (they are not part of the wheel)."""
    target = tools_dir(cache)
    if (target / TOOLS[0]).is_file():
        return target
    sdist = fetch_sdist(cache)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    root = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(tuple(root + t for t in TOOLS))]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp / root, target)
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"llama.cpp converter scripts in {target}")
    return target


def build(cache: Path, key: str, native: bool = False) -> Path:
    sdist = fetch_sdist(cache)
    work = cache / "work" / key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / f"llama_cpp_python-{SDIST_VERSION}"
    apply_patches(src)
    out = work / "dist"
    env = dict(os.environ, CMAKE_ARGS=cmake_args(native),
               CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2)))
    log("building the wheel (about 15 minutes on 2 cores: the CPU backend once per instruction-set level)")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-C", f"build-dir={work / 'build'}", "-w", str(out), str(src)],
        check=True, env=env, stdout=sys.stderr,
    )
    wheels = list(out.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {out}, found {wheels}")
    final_dir = cache / "wheels" / key
    tmp_dir = cache / "wheels" / f".{key}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    shutil.copy2(wheels[0], tmp_dir / wheels[0].name)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(work, ignore_errors=True)
    return final_dir / wheels[0].name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key", action="store_true", help="print the cache key and exit")
    ap.add_argument("--native", action="store_true",
                    help="build for this CPU only (GGML_NATIVE=ON): the comparison wheel of the benchmarks; it takes "
                         "ggml's AMX path on AMX CPUs, so it is never installed by make")
    args = ap.parse_args()
    key = build_key(args.native)
    if args.key:
        print(key)
        return
    cache = cache_root()
    cached = sorted((cache / "wheels" / key).glob("*.whl")) if (cache / "wheels" / key).is_dir() else []
    wheel = cached[0] if cached else build(cache, key, args.native)
    if cached:
        log(f"reusing cached wheel {wheel}")
    extract_tools(cache)
    print(wheel)


if __name__ == "__main__":
    main()
