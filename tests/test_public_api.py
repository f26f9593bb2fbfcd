"""The public API as a user writes it, and the one-way layers under it (checked with the native library gone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves():
    import atp_cli

    for name in atp_cli.__all__:
        assert getattr(atp_cli, name) is not None, name
    from atp_cli import Pipeline, Result  # noqa: F401  (the form the README shows)

    assert atp_cli.Pipeline.__module__ == "atp_cli.pipeline"
    assert issubclass(atp_cli.UsageError, atp_cli.AtpError)
    assert isinstance(atp_cli.__version__, str) and atp_cli.__version__
    with pytest.raises(AttributeError, match="no attribute 'Pipe'"):
        atp_cli.Pipe  # noqa: B018


def without_native(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(ROOT / "no-such-folder"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_package_and_the_pruning_layer_import_without_the_native_library():
    done = without_native(
        "import sys, pkgutil, importlib, atp_cli, atp_cli.pruning\n"
        "names = [m.name for m in pkgutil.iter_modules(atp_cli.pruning.__path__, 'atp_cli.pruning.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp was imported'\n"
        "print(len(names))\n")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 8  # every strategy module, the schema and the stores
    failed = without_native("import atp_cli; atp_cli.Pipeline")
    assert failed.returncode != 0  # the API itself needs the library, and says so when used
