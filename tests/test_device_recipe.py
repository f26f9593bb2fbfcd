"""The one-shot accelerator recipe (`scripts/train_default_model.py --device-run`) on the CPU with a tiny step count:
data rendered in parallel, the place imprint, stage 2 with the projector learning, stopped by the time budget, stage 4, and artifacts
in $OUT within the device tool's limits (at most 8 files of at most 16 MB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def test_device_run_leaves_small_artifacts_in_out(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), ATP_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "scripts/train_default_model.py", "--device-run", "--work", str(tmp_path / "work"),
           "--train-images", "6", "--val-images", "2", "--turns", "2", "--lora-steps", "1000", "--time-budget", "1",
           "--validate-every", "1000", "--calibration-questions", "2", "--operating-points", "64",
           "--imprint-places", "3", "--align-images", "2"]  # the place imprint runs in the recipe too
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"projector.safetensors", "lora.safetensors", "atp.safetensors"}
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert "imprint step 2" in done.stdout and "left/right" in done.stdout  # before stage 2, with its held-out figure
    assert "validation" in done.stdout  # the time budget stopped it with a validation, long before 1000 steps
    steps = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert 1 <= len(steps) < 1000
    records = (tmp_path / "work" / "data" / "train.jsonl").read_text().splitlines()
    assert len(records) == 6 and all((tmp_path / "work" / "data" / json.loads(r)["image"]).is_file() for r in records)
    from atp_cli.pruning.store import load_safetensors

    weights = load_safetensors(out / "atp.safetensors")
    assert weights.budgets[0] == 144 and 64.0 in weights.budgets and weights.config.debias


def test_focus_pairs_name_a_question_type_and_a_factor():
    import argparse

    from scripts.train_default_model import focus_pair

    assert focus_pair("position=3") == ("position", 3.0)
    for bad in ("position", "positon=3", "position=x", "position=-1", "position=inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            focus_pair(bad)
