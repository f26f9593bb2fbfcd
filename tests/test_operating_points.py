"""ATP operating points: named budgets stored with the modules in the mmproj, calibrated on questions and chosen at
run time (`Pipeline(..., budget=B)`, `atp chat --budget B`, `atp bench quality`)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from atp_cli.cli import cli
from atp_cli.errors import InputError
from atp_cli.pipeline import Pipeline
from atp_cli.pruning.atp import AtpStrategy, ThresholdMLP
from atp_cli.pruning.config import AtpConfig
from atp_cli.pruning.hybrid import Hybrid
from atp_cli.pruning.registry import make_strategy
from atp_cli.pruning.schema import SchemaError
from atp_cli.pruning.store import AtpWeights, load_safetensors, read_atp, save_safetensors
from converters.convert import attach, find_pair
from tests.test_cli_errors import one_line, run
from tests.test_pipeline import CFG, GRID, folder, images  # noqa: F401  (fixture)

N_VISUAL = GRID * GRID


def _weights(budgets=(), pre_keep=(), mlps=True) -> AtpWeights:
    modules = (ThresholdMLP.constant(0.9, 0.6, hidden=4),) * 2 if mlps else ()
    return AtpWeights(AtpConfig(4, (1, 3), grid=(GRID, GRID), hidden=4), modules,
                      () if mlps else (0.5, 0.5), () if mlps else (0, 0), tuple(budgets), tuple(pre_keep))


def test_operating_points_round_trip_and_are_checked(tmp_path):
    w = _weights((40.0, 16.0), (64, 20))
    save_safetensors(w, tmp_path / "a.safetensors")
    back = load_safetensors(tmp_path / "a.safetensors")
    assert back.budgets == (40.0, 16.0) and back.pre_keep == (64, 20) and back.operating_point(16.2) == 20
    with pytest.raises(InputError, match="no operating point at a budget of 30"):
        back.operating_point(30)
    with pytest.raises(SchemaError, match="one pre-LLM count per budget"):
        _weights((40.0, 16.0), (64,)).validate()
    with pytest.raises(SchemaError, match="trained threshold MLPs"):
        _weights((40.0,), (64,), mlps=False).validate()
    with pytest.raises(SchemaError, match="more than the 64"):
        _weights((40.0,), (65,)).validate(n_visual=N_VISUAL)
    with pytest.raises(SchemaError, match="distinct"):
        _weights((40.0, 40.0), (64, 20)).validate()


def test_a_budget_selects_the_modules_alone_or_after_a_pre_llm_selection():
    w = _weights((40.0, 16.0), (64, 20))
    assert isinstance(make_strategy("atp", 4, N_VISUAL, w, budget=40), AtpStrategy)  # every row: the modules alone
    low = make_strategy("atp", 4, N_VISUAL, w, budget=16)
    assert isinstance(low, Hybrid) and low.pre.n_keep == 20 and low.name == "atp"
    assert isinstance(make_strategy("atp", 4, N_VISUAL, w), AtpStrategy)  # no budget: the trained modules


def test_calibrated_points_meet_their_budgets_and_chat_runs_them(folder, tmp_path):  # noqa: F811
    work = tmp_path / "m"
    shutil.copytree(folder, work)
    attach(work, _weights())
    data = tmp_path / "q.jsonl"
    paths = []
    for i, img in enumerate(images(4, seed=5)):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    import json

    data.write_text("\n".join(json.dumps({"image": str(p), "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is it"}, {"from": "gpt", "value": "red"}]}) for p in paths))
    res = CliRunner().invoke(cli, ["calibrate", str(work), str(data), "--operating-points", "30,12"])
    assert res.exit_code == 0, res.output
    weights = read_atp(find_pair(work)[1])
    assert weights.budgets == (30.0, 12.0) and all(1 <= k <= N_VISUAL for k in weights.pre_keep)
    with Pipeline.from_dir(work, "atp", CFG, budget=12) as pipe:
        got = np.mean([pipe(p, "what colour is it").stats.visual_tokens_avg for p in paths])
        assert abs(got - 12) < 4  # met on the calibration questions, to the resolution of whole rows
        assert pipe(paths[0], "what colour is it").visual_in == weights.pre_keep[1]
    chat = CliRunner().invoke(cli, ["chat", "--model", str(work), "--image", str(paths[0]), "--budget", "12",
                                    "--max-tokens", "2", "--json", "what colour is it"])
    assert chat.exit_code == 0, chat.output
    assert f'"visual_tokens_in": {weights.pre_keep[1]}' in chat.output
    one_line(*run("chat", "--model", work, "--image", paths[0], "--budget", "50", "q"), "no operating point")
    one_line(*run("chat", "--model", work, "--image", paths[0], "--strategy", "fastv", "--budget", "12", "q"),
             "operating point of the atp strategy")


def test_fixed_thresholds_calibrate_to_a_budget(folder):  # noqa: F811
    from atp_cli.calibration import calibrate_thresholds

    questions = [(img, "what colour is it") for img in images(3, seed=9)]
    with Pipeline.from_dir(folder, "none", CFG) as pipe:
        config = AtpConfig(4, (1, 3), grid=(GRID, GRID), hidden=4)
        for target in (40.0, 24.0):
            theta, reached = calibrate_thresholds(pipe, questions, target, config, theta_sp=0.9)
            assert theta > 0 and abs(reached - target) < 4
            assert abs(np.mean([pipe(i, q).stats.visual_tokens_avg for i, q in questions]) - reached) < 1e-6
