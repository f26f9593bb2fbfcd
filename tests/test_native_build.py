"""The native build as installed: no AMX path on any CPU, the right CPU variant for this CPU, real text decoded
through the stock and the segment contexts, and `atp doctor` (docs/ARCHITECTURE.md, "CPU variants and AMX")."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atp_cli import cpu
from atp_cli.assets import smollm2_gguf
from atp_cli.runtime import backend

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine() in ("x86_64", "AMD64")
PROMPT = "The capital of France is"


def load_build_wheel():
    spec = importlib.util.spec_from_file_location("build_wheel", ROOT / "native_patch" / "build_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_variant(flags: frozenset[str]) -> str:
    """The variant ggml's scores pick among those of patch 0006 (the highest whose instruction sets are present)."""
    avx512 = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"} <= flags
    haswell = {"avx", "avx2", "f16c", "fma", "bmi2", "sse4_2"} <= flags
    if avx512 and haswell and {"avx512vbmi", "avx512_vnni", "avx512_bf16"} <= flags:
        return "zen4"
    if avx512 and haswell and {"avx512vbmi", "avx512_vnni"} <= flags:
        return "icelake"
    if avx512 and haswell and "avx512_vnni" in flags:
        return "cascadelake"
    if avx512 and haswell:
        return "skylakex"
    if haswell and "avx_vnni" in flags:
        return "alderlake"
    return "haswell" if haswell else "x64"


def test_cpu_backend_never_takes_the_amx_path():
    be = backend.cpu_backend()
    assert be.features, "llama_print_system_info reported no CPU features"
    assert be.features.get("AMX_INT8", "0") == "0", be.features
    assert not any("AMX" in b.upper() for b in be.buffer_types), be.buffer_types
    assert not be.uses_amx


@pytest.mark.skipif(not X86, reason="the run-time CPU variants are built on x86-64 only")
def test_the_best_variant_for_this_cpu_is_loaded():
    """A portable build must not lose speed silently: an AVX-512 CPU gets an AVX-512 variant."""
    be = backend.cpu_backend()
    assert be.variant == expected_variant(cpu.flags()), (be.library, cpu.isa_summary())
    if "avx512f" in cpu.flags():
        assert be.features.get("AVX512") == "1", be.features
    if "avx2" in cpu.flags():
        assert be.features.get("AVX2") == "1", be.features


def test_every_variant_ships_and_none_has_amx():
    names = sorted(p.name for p in backend.lib_dir().glob("libggml-cpu*.so*"))
    if X86:
        variants = {n.removeprefix("libggml-cpu-").split(".so")[0] for n in names}
        assert {"x64", "haswell", "alderlake", "skylakex", "cascadelake", "icelake", "zen4"} <= variants, names
    assert not any("sapphirerapids" in n or "amx" in n for n in names), names


def test_cache_key_does_not_depend_on_the_build_cpu(monkeypatch):
    bw = load_build_wheel()
    assert "GGML_NATIVE=OFF" in bw.PORTABLE_ARGS and "GGML_CPU_ALL_VARIANTS=ON" in bw.PORTABLE_ARGS
    assert "AMX" not in bw.PORTABLE_ARGS
    monkeypatch.setattr(bw.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(bw, "cpu_flags", lambda: "avx2 fma")
    key_avx2 = bw.build_key()
    monkeypatch.setattr(bw, "cpu_flags", lambda: "avx2 fma avx512f amx_int8 amx_tile")
    assert bw.build_key() == key_avx2
    monkeypatch.setattr(bw.platform, "machine", lambda: "aarch64")  # native build: keyed by the CPU
    key_a = bw.build_key()
    monkeypatch.setattr(bw, "cpu_flags", lambda: "asimd")
    assert bw.build_key() != key_a
    assert bw.cmake_args() == bw.NATIVE_ARGS


def test_the_variant_patch_lists_what_the_install_lists():
    text = (ROOT / "native_patch" / "0006-portable-cpu-variants-without-amx.patch").read_text()
    new_side = [line[1:] for line in text.splitlines() if line[:1] in "+ " and not line.startswith("+++")]
    built = {line.split("(")[1].split()[0].rstrip(")") for line in new_side
             if line.strip().startswith("ggml_add_cpu_backend_variant(")}
    install = next(line for line in text.splitlines() if line.startswith("+") and "foreach(variant" in line)
    installed = set(install.split("foreach(variant", 1)[1].rstrip(")").split())
    assert built == installed == {"x64", "haswell", "alderlake", "skylakex", "cascadelake", "icelake", "zen4"}
    assert "AMX" not in "".join(line for line in new_side if "ggml_add_cpu_backend_variant(" in line)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_gguf()


def test_stock_llama_cpp_python_decodes_real_text(smollm2):
    """The stock path of the same wheel (the command that segfaulted on AMX CPUs)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(smollm2), n_ctx=128, verbose=False, seed=0)
    try:
        out = llm(PROMPT, max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    assert "Paris" in out["choices"][0]["text"], out


@pytest.mark.parametrize("boundaries", [(), (3,), (2, 10, 20)])
def test_stock_and_segment_contexts_decode_the_same_real_text(smollm2, boundaries):
    from atp_cli.driver import SegmentedDecoder
    from atp_cli.prompt_input import Prompt, Span
    from atp_cli.runtime.context import ContextConfig
    from atp_cli.runtime.model import LlamaModel

    cfg = ContextConfig(n_ctx=128, n_batch=64, n_ubatch=64)
    with LlamaModel(smollm2) as model:
        prompt = Prompt((Span.text(model.tokenize(PROMPT, add_special=True)),))
        texts = []
        for stock in (True, False):
            with SegmentedDecoder(model, () if stock else boundaries, cfg, readout=False, stock=stock) as dec:
                logits = dec.prefill(prompt)
                tokens = []
                for _ in range(8):
                    tokens.append(int(np.argmax(logits)))
                    logits = dec.extend([tokens[-1]])
            texts.append(b"".join(model.token_piece(t) for t in tokens).decode("utf-8", errors="replace"))
    assert "Paris" in texts[0], texts
    assert texts[1] == texts[0]


def run_doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atp_cli", "doctor", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_doctor_reports_the_build(tmp_path):
    env = dict(os.environ, ATP_CACHE_DIR=str(tmp_path / "cache"))
    (tmp_path / "cache" / "wheels").mkdir(parents=True)
    (tmp_path / "cache" / "wheels" / "w.whl").write_bytes(b"x" * 2048)
    done = run_doctor("--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    facts = report["facts"]
    assert report["problems"] == []
    assert facts["atp patch ABI"].startswith("1 ")
    assert facts["CPU"] == cpu.model_name()
    assert facts["threads"].startswith(str(cpu.usable_cores()))
    assert "AMX_INT8" not in facts["backend features"]
    assert facts["cache folders"] == {"wheels": "2.0 KiB"}
    assert str(tmp_path / "cache") in facts["cache"]
    if X86:
        assert facts["CPU backend"].startswith(expected_variant(cpu.flags()) + ":")
    text = run_doctor(env=env)
    assert text.returncode == 0 and "CPU backend" in text.stdout and "torch" in text.stdout


def test_doctor_fails_clearly_without_the_native_library(tmp_path):
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(tmp_path))  # llama-cpp-python loads libllama from here
    done = run_doctor(env=env)
    assert done.returncode == 1
    assert "error: the native library cannot be loaded" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_doctor_names_a_stock_library(monkeypatch):
    from atp_cli import doctor
    from atp_cli.errors import NativeLibraryError
    from atp_cli.runtime import native

    def stock():
        raise NativeLibraryError("libllama lacks the atp entry points ['llama_atp_abi_version']")

    monkeypatch.setattr(native, "atp_lib", stock)
    report = doctor.collect()
    assert report.facts["atp patch ABI"] == "missing"
    assert any("lacks the atp entry points" in p for p in report.problems)


def test_the_pinned_llama_cpp_python_version_agrees_everywhere(tmp_path):
    """The version is written once, in pyproject.toml: the wheel's build reads it (and refuses a pin whose sdist
    hash it lacks), the converter's tools folder follows the installed wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from converters.llm import LLAMA_CPP_VERSION

    pins = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if d.startswith("llama-cpp-python")]
    assert pins == [f"llama-cpp-python=={load_build_wheel().SDIST_VERSION}"]
    assert LLAMA_CPP_VERSION == load_build_wheel().SDIST_VERSION
    other = tmp_path / "pyproject.toml"
    other.write_text('dependencies = ["llama-cpp-python==9.9.9"]\n')
    with pytest.raises(SystemExit, match="hash"):
        load_build_wheel().pinned_version(other)
