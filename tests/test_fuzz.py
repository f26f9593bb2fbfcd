"""A short, seeded run of the fuzzing harness (tests/fuzzing.py); `scripts/fuzz.py` runs the same searches long.

ATP_FUZZ_EXAMPLES sets the cases per target (default 40); the seed is fixed (derandomize), so a failure here is
reproducible by running this file again.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import gguf
import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests import fuzzing  # noqa: E402
from tests.test_pipeline import folder  # noqa: E402,F401

EXAMPLES = int(os.environ.get("ATP_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
OUTCOMES: dict[str, Counter] = {}


def tally(target: str, outcome: str) -> None:
    OUTCOMES.setdefault(target, Counter())[outcome] += 1


def report(target: str) -> Counter:
    """What a search met, printed for scripts/fuzz.py (and pytest -s)."""
    counts = OUTCOMES.get(target, Counter())
    print(f"fuzz {target}: {dict(counts)}")
    return counts


@pytest.fixture(scope="module")
def good_atp(tmp_path_factory) -> Path:
    from atp_cli.pruning.atp import ThresholdMLP
    from atp_cli.pruning.config import AtpConfig
    from atp_cli.pruning.store import AtpWeights, add_to_writer

    path = tmp_path_factory.mktemp("fuzz-atp") / "good.gguf"
    mlps = tuple(ThresholdMLP.constant(1.0, 0.5, hidden=6) for _ in range(3))
    weights = AtpWeights(AtpConfig(6, (1, 3, 5), grid=(8, 8), hidden=6), mlps, (0.6, 0.5, 0.4), (4, 0, 2))
    w = gguf.GGUFWriter(path, "clip")
    add_to_writer(w, weights)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_atp_reader(good_atp):
    @SETTINGS
    @given(fuzzing.atp_mutation())
    def search(mutation):
        tally("atp reader", fuzzing.check_atp_reader(good_atp, *mutation))

    search()
    assert report("atp reader")["refused"] > 0  # the search reached broken files


def test_mmproj_check_and_mtmd(folder, tmp_path_factory):  # noqa: F811
    from converters.convert import find_pair

    model, mmproj = find_pair(folder)
    keep = tmp_path_factory.mktemp("fuzz-mmproj")

    @SETTINGS
    @given(fuzzing.mmproj_mutation())
    def search(mutation):
        tally("mmproj check", fuzzing.check_mmproj_mutant(mmproj, *mutation, keep, n_embd=64))

    search()
    passed = sorted(keep.glob("*.gguf"))
    loaded = fuzzing.load_in_child(model, passed)
    crashes = [Path(p).with_suffix(".txt").read_text() for p, r in loaded.items() if r == "crash"]
    assert not crashes, f"libmtmd crashed on mutants the check passed: {crashes}"
    assert set(loaded) == {str(p) for p in passed}
    tally("mmproj check", "loaded by mtmd")
    OUTCOMES["mmproj check"]["loaded by mtmd"] = sum(r == "ok" for r in loaded.values())
    assert report("mmproj check")["refused"] > 0


def test_checkpoint_reader(tmp_path_factory):
    good = fuzzing.tiny_checkpoint(tmp_path_factory.mktemp("fuzz-ckpt") / "ckpt")

    @SETTINGS
    @given(fuzzing.checkpoint_mutation())
    def search(mutation):
        tally("checkpoint reader", fuzzing.check_checkpoint(good, *mutation))

    search()
    assert report("checkpoint reader")["refused"] > 0


def test_cli_options(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz-cli")

    @SETTINGS
    @given(fuzzing.cli_case())
    def search(case):
        tally("cli", fuzzing.check_cli(*case, workdir))

    search()
    assert report("cli")["refused"] > 0
