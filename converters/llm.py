"""The language model of a LLaVA checkpoint -> GGUF, through llama.cpp's own converter of the pinned version.

llama.cpp's `convert_hf_to_gguf.py` knows every tokenizer flavour (SentencePiece, BPE with its pre-tokenizer
fingerprints), chat templates and the llama weight permutations, and streams tensors lazily; `atp convert`
runs it on the checkpoint (it takes the text model of a LlavaForConditionalGeneration) and then quantizes with
llama.cpp's quantizer for the K-quants and other types it cannot write itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from atp_cli.errors import InputError, ModelError
from atp_cli.paths import cache_dir
from converters.quantize import FTYPES, quantize_gguf

def _installed_llama_cpp() -> str:
    """The installed llama-cpp-python's version (the patched wheel built from the pyproject.toml pin); its
    converter was unpacked beside the wheel's build under that version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "not-installed"


LLAMA_CPP_VERSION = _installed_llama_cpp()
DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")  # written by convert_hf_to_gguf itself


def tools_dir() -> Path:
    """Unpacked by `make setup` (native_patch/build_wheel.py) from the pinned sdist."""
    env = os.environ.get("ATP_LLAMA_CPP_TOOLS")
    if env:
        return Path(env)
    return cache_dir("tools") / f"llama-cpp-python-{LLAMA_CPP_VERSION}"


def convert_text_model(checkpoint: Path, out: Path, outtype: str, log_file: Path | None = None) -> Path:
    """Write the language model as GGUF of `outtype` to `out` (temporary names, renamed when complete)."""
    if outtype not in FTYPES:
        raise InputError(f"unknown output type {outtype!r}; choose one of {', '.join(FTYPES)}")
    script = tools_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ModelError(f"llama.cpp's converter is not unpacked at {script.parent}; run `make setup`")
    first = outtype if outtype in DIRECT_TYPES else "f16"
    tmp = out.with_name(out.name + f".{first}.part")
    cmd = [sys.executable, str(script), str(checkpoint), "--outfile", str(tmp), "--outtype", first]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")]))
    try:
        with open(log_file or os.devnull, "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not tmp.is_file():
            where = f" (log: {log_file})" if log_file else ""
            raise ModelError(f"llama.cpp's converter failed on {checkpoint} with exit code {proc.returncode}{where}")
        if first == outtype:
            os.replace(tmp, out)
        else:
            quantize_gguf(tmp, out, outtype)
    finally:
        tmp.unlink(missing_ok=True)
    return out
