"""atp bench: budget rules, the stock llama-cpp-python peer, the quality and speed runners and their reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from atp_cli.bench.peer import StockLlava  # noqa: E402
from atp_cli.bench.quality import BLIND, PEER, Plan, run_quality  # noqa: E402
from atp_cli.bench.speed import budget_schedule, bench_files  # noqa: E402
from atp_cli.cli import cli  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.pruning.budget import params_for_budget  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from converters.convert import ConvertOptions, convert, find_pair  # noqa: E402
from tests.tiny_llava import build_tiny_llava  # noqa: E402

GRID, LAYERS = 8, 8
N_VISUAL = GRID * GRID
CFG = PipelineConfig(context=ContextConfig(n_ctx=512, n_batch=128, n_ubatch=128), max_tokens=6)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ckpt = build_tiny_llava(root / "ckpt", "clip", grid=GRID, patch=4, text_layers=LAYERS, seed=3)
    convert(ckpt, root / "out", ConvertOptions(outtype="f16"))
    return root / "out"


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list[dict]:
    """Three questions on distinct images, in the row format of atp_cli.evaluation.load_split."""
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    rows = []
    for i, (q, a, kind) in enumerate([("what is in the image", "cat", "what"), ("is it red", "yes", "yesno"),
                                      ("what colour is it", "red", "what")]):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        rows.append({"image_path": path, "question": q, "answer": a, "kind": kind})
    return rows


@pytest.mark.parametrize("name", ["fastv", "uniform", "random", "pdrop", "visionzip-style"])
@pytest.mark.parametrize("budget", [24.0, 40.0])
def test_budget_params_meet_the_budget_in_the_runtime(folder, split, name, budget):
    params = params_for_budget(name, budget, LAYERS, N_VISUAL)
    with Pipeline.from_dir(folder, name, CFG, **params) as pipe:
        got = pipe(split[0]["image_path"], split[0]["question"]).stats.visual_tokens_avg
    assert abs(got - budget) <= 1.0, (name, params, got)


def test_pdrop_paper_stages_used_when_they_can_meet_the_budget():
    assert params_for_budget("pdrop", 300, 32, 576)["stages"] == (0.25, 0.5, 0.75)
    early = params_for_budget("pdrop", 144, 32, 576)["stages"]
    assert early[0] == pytest.approx(2 / 32)


def test_budget_rules_reject_impossible_budgets():
    with pytest.raises(InputError, match="first unpruned layer"):
        params_for_budget("fastv", 10, 32, 576)
    assert params_for_budget("fastv", 144, 30, 576)["k"] == 2  # the paper's layer where it can meet the budget
    low = params_for_budget("fastv", 32, 30, 576)  # two unpruned layers alone average 38.4: one earlier
    assert low["k"] == 1 and abs((576 + 29 * low["ratio"] * 576) / 30 - 32) < 1e-6
    with pytest.raises(InputError, match="budget must be"):
        params_for_budget("uniform", 0, 32, 576)
    with pytest.raises(InputError, match="closed-form"):
        params_for_budget("atp", 144, 32, 576)


def test_stock_peer_sends_the_same_prompt_and_answers_alike(folder, split):
    model, mmproj = find_pair(folder)
    peer = StockLlava(model, mmproj, n_ctx=512, max_tokens=6)
    try:
        with Pipeline(model, mmproj, "none", CFG) as pipe:
            for r in split:
                ours = pipe(r["image_path"], r["question"])
                prompt, _ = pipe.prompt(r["image_path"], r["question"])
                theirs = peer(r["image_path"], r["question"])
                before, image, after = prompt.spans
                n = len(prompt)
                stock_ids = peer.llm.input_ids[: peer.llm.n_tokens]
                assert list(stock_ids[: len(before)]) == list(before.tokens)
                assert list(stock_ids[n - len(after): n]) == list(after.tokens)  # the image fills the same span
                # the random model emits byte tokens: llama-cpp-python drops invalid UTF-8 where atp shows U+FFFD,
                # and streams past max_tokens while a character is incomplete
                clean = ours.text.replace("\ufffd", "").strip()
                assert theirs.text.startswith(clean) or clean.startswith(theirs.text)
    finally:
        peer.close()


def test_quality_rows_measure_each_plan(folder, split):
    model, mmproj = find_pair(folder)
    plans = [Plan("fastv", 24.0), Plan("none"), Plan("uniform", 24.0)]
    with Pipeline(model, mmproj, "none", CFG) as pipe:
        peer = StockLlava(model, mmproj, n_ctx=512, max_tokens=6)
        ticks = []
        rows = run_quality(pipe, split, plans, peer, tick=lambda: ticks.append(1), blind=True)
        peer.close()
    assert [r.strategy for r in rows] == ["none", "fastv", "uniform", PEER, BLIND]
    assert len(ticks) == 5 * len(split)
    none, fastv, _, stock, blind = rows
    assert blind.tokens_avg == 0 and blind.visual_in == 0 and blind.kv_mib < none.kv_mib / 2
    assert none.agreement == 1.0 and none.tokens_avg == N_VISUAL and none.visual_in == N_VISUAL
    assert abs(fastv.tokens_avg - 24.0) <= 1.0 and fastv.params["k"] == 2
    assert fastv.kv_mib < none.kv_mib and fastv.prefill_s > 0 and fastv.encode_s > 0
    assert stock.n == len(split) and len(stock.answers) == len(split) and stock.encode_s is None
    assert stock.kv_mib >= none.kv_mib  # the stock cache holds every prompt token
    for r in rows:
        assert sum(c for c, _ in r.by_kind.values()) == round(r.accuracy * r.n)
        assert sum(t for _, t in r.by_kind.values()) == len(split)
        assert r.peak_rss_mib > 0 and (r.ttft_s > 0 or r is blind)
        assert len(r.correct) == r.n and sum(r.correct) == round(r.accuracy * r.n)
        # retained is against the unpruned row on the same questions (undefined while it gets nothing right)
        assert r.retained == (pytest.approx(r.accuracy / none.accuracy) if none.accuracy else None)


@pytest.mark.filterwarnings("error:No artists")  # every row must reach the plots
def test_cli_quality_writes_json_markdown_and_plots(folder, tmp_path, split):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"image": str(r["image_path"]), "kind": r["kind"], "conversations": [
        {"from": "human", "value": "<image>\n" + r["question"]}, {"from": "gpt", "value": r["answer"]}]})
        for r in split))
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "quality", "--model", str(folder), "--data", str(data), "-n", "2",
                                   "--strategies", "none,fastv", "--budgets", "24,40", "--no-peer", "--out", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads((out / "quality.json").read_text())
    assert [(r["strategy"], r["budget"]) for r in payload["rows"]] == [("none", None), ("fastv", 24.0), ("fastv", 40.0),
                                                                           (BLIND, None)]
    assert "| fastv | 24 |" in (out / "quality.md").read_text()
    assert payload["title"].endswith(f"2 questions of {data}")  # a given file, not a generated split, is named
    for png in ("accuracy_vs_tokens.png", "ttft_vs_tokens.png"):
        assert Image.open(out / png).size[0] > 100


def test_cli_quality_rejects_unknown_strategy(folder, tmp_path):
    res = CliRunner().invoke(cli, ["bench", "quality", "--model", str(folder), "--strategies", "none,magic",
                                   "--out", str(tmp_path)])
    assert res.exit_code != 0 and "magic" in res.output


def test_budget_schedule_hits_the_token_layer_ratio():
    for n_layer in (16, 30, 32):
        s = budget_schedule(n_layer, 0.25)
        assert s.token_layer_ratio(n_layer) == pytest.approx(0.25)
        assert list(s.keep) == sorted(s.keep, reverse=True)
    with pytest.raises(ValueError):
        budget_schedule(32, 0.05)


def test_speed_rows_compare_stock_and_atp_side_by_side(folder):
    model, mmproj = find_pair(folder)
    res = bench_files(model, mmproj, runs=2, threads=1, budgets=(24.0,), n_decode=4, n_ctx=1024)
    stock, limit, atp, hybrid = res["rows"]
    assert stock["visual_in"] == N_VISUAL and limit["visual_in"] == 24 and atp["visual_in"] == N_VISUAL
    assert atp["tokens_avg"] == pytest.approx(24.0) and hybrid["tokens_avg"] == pytest.approx(24.0)
    assert hybrid["config"].startswith("hybrid") and hybrid["visual_in"] == 48  # CDPruner keeps twice the budget
    assert all(r["ttft_spread"] >= 0 for r in res["rows"])
    # stock allocates the whole context; atp's later segments only what they hold (one 256-cell step here)
    assert limit["kv_alloc_vs_stock"] == 1.0 and atp["kv_alloc_vs_stock"] < 0.5 and hybrid["kv_alloc_vs_stock"] < 0.5
    assert stock["prefill_vs_stock"] == 1.0 and atp["kv_vs_stock"] < 1.0 and limit["kv_vs_stock"] < 1.0
    assert atp["kv_prompt_vs_stock"] < atp["kv_vs_stock"]  # decoded tokens are never pruned
    assert all(r["kv_prompt_mib"] < r["kv_used_mib"] for r in res["rows"])
    assert all(r["encode_s"] > 0 and r["ttft_s"] >= r["prefill_s"] for r in res["rows"])


def test_contention_watch_sees_another_busy_process():
    """Processes spinning on every core beside the measured code are counted as contention and warned about."""
    import multiprocessing as mp
    import os
    import time

    from atp_cli.bench.contention import ContentionWatch, spread

    spinners = [mp.get_context("spawn").Process(target=_spin, args=(3.0,)) for _ in range(os.cpu_count() or 1)]
    for sp in spinners:
        sp.start()
    time.sleep(0.7)  # started (a spawned interpreter takes a moment)
    with ContentionWatch() as busy:  # left before the spinners are waited for: their CPU time is other processes'
        time.sleep(1.5)
    for sp in spinners:
        sp.join()
    assert busy.result.others_share > 0.5 and any("other processes" in w for w in busy.result.warnings())
    assert busy.result.seconds >= 1.5 and busy.result.as_dict()["warnings"] == busy.result.warnings()
    assert spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)


def _spin(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
