"""The decisive comparison's instrument: fidelity metrics and their intervals, records that resume exactly, the new
strategies meeting their budgets in the runtime, and bad input refused before any model work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import entropy

from atp_cli.bench.fidelity import kl_divergence, mean_interval, paired_difference, top1_equal
from atp_cli.bench.quality import BLIND, Plan, run_quality
from atp_cli.bench.records import RECORDS, RunStore
from atp_cli.cli import cli
from atp_cli.errors import InputError
from atp_cli.model_files import find_pair
from atp_cli.pipeline import Pipeline, log_softmax
from atp_cli.pruning.budget import params_for_budget
from tests.test_cli_errors import one_line, run
from tests.test_bench import CFG, LAYERS, N_VISUAL, folder, split  # noqa: F401  (fixtures)


def test_kl_and_top1_from_log_probabilities():
    rng = np.random.default_rng(0)
    a, b = log_softmax(rng.standard_normal(50)), log_softmax(rng.standard_normal(50))
    assert kl_divergence(a, b) == pytest.approx(entropy(np.exp(a), np.exp(b)), rel=1e-5)
    assert kl_divergence(a, a) == pytest.approx(0.0, abs=1e-9) and top1_equal(a, a)
    assert top1_equal(a, b) == (np.argmax(a) == np.argmax(b))


def test_paired_difference_separates_a_consistent_gap_from_noise():
    rng = np.random.default_rng(1)
    base = rng.random(200)
    d, ci = paired_difference(base + 0.05, base)  # better on every question by the same amount
    assert d == pytest.approx(0.05) and (ci is None or ci[1] - ci[0] < 1e-12)  # every resample agrees
    d, ci = paired_difference(base + 0.05 + 0.01 * rng.standard_normal(200), base)
    assert ci[0] > 0  # consistently better: the interval excludes 0
    noisy = base + 0.3 * rng.standard_normal(200)
    d, ci = paired_difference(noisy - noisy.mean() + base.mean(), base)
    assert ci[0] < 0 < ci[1]
    mean, ci = mean_interval([True] * 90 + [False] * 10)
    assert mean == 0.9 and ci[0] < 0.9 < ci[1]


def test_rows_carry_fidelity_and_the_blind_row_its_distance(folder, split):  # noqa: F811
    model, mmproj = find_pair(folder)
    plans = [Plan("none"), Plan("fastv", 24.0), Plan("cdpruner", 16.0), Plan("dart", 24.0)]
    with Pipeline(model, mmproj, "none", CFG) as pipe:
        rows = run_quality(pipe, split, plans, blind=True, chunk=2)
    by = {r.strategy: r for r in rows}
    assert by["none"].kl == pytest.approx(0.0, abs=1e-6) and by["none"].top1 == 1.0 and by["none"].agreement == 1.0
    for name in ("fastv", "cdpruner", "dart", BLIND):
        r = by[name]
        assert r.kl is not None and r.kl >= 0 and 0 <= r.top1 <= 1 and len(r.kept_per_module) == len(split)
    assert by[BLIND].kl > 0  # the image moves the first token's distribution
    assert by["cdpruner"].visual_in == 16 and by["cdpruner"].tokens_avg == 16
    assert abs(by["dart"].tokens_avg - 24.0) <= 1.0 and all(len(k) == 1 for k in by["dart"].kept_per_module)


def test_a_stopped_run_resumes_to_the_same_rows(folder, split, tmp_path):  # noqa: F811
    model, mmproj = find_pair(folder)
    plans = [Plan("none"), Plan("uniform", 24.0), Plan("random", 24.0)]
    header = {"questions": ["q"], "model": "m", "plans": [[p.strategy, p.budget] for p in plans]}
    with Pipeline(model, mmproj, "none", CFG) as pipe:
        full = run_quality(pipe, split, plans, store=RunStore.open(tmp_path / "a", header, False), chunk=2)
        lines = (tmp_path / "a" / RECORDS).read_text().splitlines()
        assert len(lines) == 3 * len(split)
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "run.json").write_text((tmp_path / "a" / "run.json").read_text())
        (tmp_path / "b" / RECORDS).write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # killed mid-line
        ticks = []
        resumed = run_quality(pipe, split, plans, store=RunStore.open(tmp_path / "b", header, True), chunk=2,
                              tick=lambda: ticks.append(1))
    assert len(ticks) == 3 * len(split) - 4  # only what was missing ran
    for a, b in zip(full, resumed):
        assert (a.answers, a.correct, a.tokens_avg) == (b.answers, b.correct, b.tokens_avg)
        assert a.kl == pytest.approx(b.kl) and a.agreement == b.agreement
    with pytest.raises(InputError, match="other questions"):
        RunStore.open(tmp_path / "a", {**header, "questions": ["x", "y"]}, True)
    longer = RunStore.open(tmp_path / "a", {**header, "questions": ["q", "more"]}, True)  # adds questions after
    assert len(longer.done) == 3 * len(split) and longer.header["questions"] == ["q", "more"]
    shorter = RunStore.open(tmp_path / "a", {**header, "questions": ["q"]}, True)  # its first questions only
    assert shorter.header["questions"] == ["q", "more"]
    with pytest.raises(InputError, match="other plans"):
        RunStore.open(tmp_path / "a", {**header, "plans": [["none", None]]}, True)
    with pytest.raises(InputError, match="--resume"):
        RunStore.open(tmp_path / "a", header, False)


def _data(tmp_path, split) -> str:  # noqa: F811
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"image": str(r["image_path"]), "kind": r["kind"], "conversations": [
        {"from": "human", "value": "<image>\n" + r["question"]}, {"from": "gpt", "value": r["answer"]}]})
        for r in split))
    return str(path)


@pytest.mark.parametrize("strategies,budgets,match", [
    ("none,fastv", "100", "outside 1..64"), ("none,uniform", "0.5", "outside 1..64"),
    ("none,fastv", "5", "first unpruned layer"), ("none,hybrid", "24", "calibration"),
    ("none,atp-free", "5", "first module")])
def test_impossible_budgets_are_refused_before_model_work(folder, split, tmp_path, strategies, budgets,  # noqa: F811
                                                          match, monkeypatch):
    import atp_cli.pipeline

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(atp_cli.pipeline.Pipeline, "__init__", no_model)
    code, err = run("bench", "quality", "--model", folder, "--data", _data(tmp_path, split), "--strategies",
                    strategies, "--budgets", budgets, "--no-peer", "--out", tmp_path / "o")
    one_line(code, err, match)


def test_cli_resumes_and_refuses_to_overwrite(folder, split, tmp_path):  # noqa: F811
    args = ["bench", "quality", "--model", str(folder), "--data", _data(tmp_path, split), "--strategies",
            "none,dart,cdpruner", "--budgets", "24", "--no-peer", "--out", str(tmp_path / "o")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    one_line(*run(*args), "--resume")
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    payload = json.loads((tmp_path / "o" / "quality.json").read_text())
    assert {r["strategy"] for r in payload["rows"]} == {"none", "dart", "cdpruner", BLIND}
    assert all("kl" in r and "agreement_ci" in r for r in payload["rows"])
    md = (tmp_path / "o" / "quality.md").read_text()
    assert "KL first token" in md and "| type | chance |" in md and "| dart | 24 | 1 |" in md  # dart's one module
    assert (tmp_path / "o" / "kl_vs_tokens.png").is_file()


def test_hybrid_calibrates_to_a_budget(folder, split):  # noqa: F811
    from atp_cli.calibration import calibrate_hybrid

    model, mmproj = find_pair(folder)
    with Pipeline(model, mmproj, "none", CFG) as pipe:
        keep, reached = calibrate_hybrid(pipe, [(r["image_path"], r["question"]) for r in split], 20.0)
        assert 1 <= keep <= N_VISUAL and abs(reached - 20.0) < 4
        r = pipe(split[0]["image_path"], split[0]["question"])
        assert r.visual_in == keep and r.stats.visual_alive_per_layer[0] == keep
        assert r.stats.visual_alive_per_layer[-1] <= keep
    assert params_for_budget("dart", 24.0, LAYERS, N_VISUAL)["k"] == 2


def test_kept_histograms_of_the_adaptive_rows(tmp_path):
    from PIL import Image

    from atp_cli.bench.report import kept_histograms

    rows = [{"strategy": "atp", "budget": None, "kept_per_module": [[10, 5], [12, 6], [8, 4], [11, 5]],
             "kinds": ["colour", "count", "colour", "count"]},
            {"strategy": "hybrid", "budget": 64.0, "kept_per_module": [[40, 20], [44, 22]], "kinds": ["a", "b"]},
            {"strategy": "fastv", "budget": 64.0, "kept_per_module": [[27], [27]], "kinds": ["a", "b"]}]
    path = kept_histograms(rows, tmp_path, "t")
    assert path == tmp_path / "kept_per_module.png" and Image.open(path).size[1] > 200  # two adaptive rows
    assert kept_histograms(rows[2:], tmp_path / "none", "t") is None  # fixed rules keep one count: nothing to show
