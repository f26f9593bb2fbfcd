"""The command line: exit codes and messages for users (click's CliRunner, in process)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atp_cli.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), standalone_mode=False, catch_exceptions=True)


def test_info_reports_architecture_and_support(tiny_gguf):
    res = run("info", str(tiny_gguf))
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["architecture"] == "llama" and data["n_layer"] == 4 and data["segments_supported"]


@pytest.mark.parametrize("ratio", ["1.0", "0.25"])
def test_demo_answers_about_the_example_image(ratio):
    res = run("demo", "--max-tokens", "12", "--keep-ratio", ratio)
    assert res.exit_code == 0, res.output
    answer, stats = res.output.split("answer:", 1)[1].lower().split("[visual tokens:", 1)
    assert "orange" in answer  # the sky of examples/sunset.png, the largest warm area
    averaged = float(stats.split("in, ", 1)[1].split()[0])
    assert averaged == 576 if ratio == "1.0" else averaged < 576 * 0.4


def test_demo_on_a_file_that_is_not_an_image(tmp_path):
    from atp_cli.errors import InputError

    bad = tmp_path / "x.png"
    bad.write_text("hello")
    res = run("demo", "--image", str(bad))
    assert isinstance(res.exception, InputError)
    assert "cannot read" in str(res.exception)


@pytest.mark.parametrize("ratio", ["0", "1.5"])
def test_demo_rejects_bad_keep_ratio(ratio):
    import click

    res = run("demo", "--keep-ratio", ratio)  # refused while parsing, before any model work
    assert isinstance(res.exception, click.BadParameter) and "not in the range 0<x<=1" in str(res.exception)


def test_default_model_from_other_artifacts_needs_their_projector_and_its_own_folder(tmp_path):
    import click

    from atp_cli.errors import ModelError

    empty = tmp_path / "artifacts"
    empty.mkdir()
    res = run("default-model", "--artifacts", str(empty))
    assert isinstance(res.exception, click.UsageError) and "--out" in str(res.exception)
    res = run("default-model", "--artifacts", str(empty), "--out", str(tmp_path / "model"))
    assert isinstance(res.exception, ModelError) and "projector" in str(res.exception)
    assert not (tmp_path / "model").exists()  # nothing written for artifacts that cannot make a model
