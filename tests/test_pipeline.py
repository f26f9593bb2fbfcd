"""Pipeline and calibration on a tiny converted LLaVA (8 x 8 visual tokens)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from atp_cli.calibration import average_tokens, calibrate  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.pruning.atp import AtpFreeStrategy  # noqa: E402
from atp_cli.pruning.registry import NAMES  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from converters.convert import ConvertOptions, convert  # noqa: E402
from tests.tiny_llava import build_tiny_llava  # noqa: E402

GRID = 8
CFG = PipelineConfig(context=ContextConfig(n_ctx=512, n_batch=128, n_ubatch=128), max_tokens=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    ckpt = build_tiny_llava(root / "ckpt", "clip", grid=GRID, patch=4, text_layers=4, seed=7)
    convert(ckpt, root / "out", ConvertOptions(outtype="f16"))
    return root / "out"


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, 3)
        arr = np.clip(base + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr))
    return out


def test_answers_with_statistics_for_every_input_kind(folder, tmp_path):
    img = images(1)[0]
    path = tmp_path / "x.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with Pipeline.from_dir(folder, "fastv", CFG, ratio=0.25, k=1) as pipe:
        results = [pipe(src, "what is in the picture") for src in (img, str(path), buf.getvalue())]
        assert len({r.text for r in results}) == 1  # greedy: same image, same answer
        r = results[0]
        assert r.visual_in == GRID * GRID and r.stats.visual_tokens_avg < GRID * GRID
        assert r.stats.visual_alive_per_layer.tolist() == [64, 16, 16, 16]
        streamed = "".join(pipe.stream(img, "what is in the picture"))
        assert streamed == r.text
        assert r.kv_bytes > 0 and r.first_token_seconds > 0


def test_every_strategy_runs(folder):
    img = images(1, seed=1)[0]
    with Pipeline.from_dir(folder, "none", CFG) as pipe:
        for name in NAMES:
            if name == "atp":
                continue  # no trained weights in this folder: covered below
            pipe.set_strategy(name)
            r = pipe(img, "describe the colour")
            if name == "none":
                assert r.stats.visual_tokens_avg == GRID * GRID
            elif name == "visionzip-style":
                assert r.visual_in == 64 and r.stats.n_visual == 64  # 54 + 10 of 64
            else:
                assert r.stats.visual_tokens_avg < GRID * GRID, name


def test_a_strategy_object_with_its_own_boundaries(folder):
    """use_strategy installs a strategy built outside the registry; its boundaries decide where tokens go."""
    from atp_cli.pruning.baselines import UniformGrid
    from atp_cli.pruning.config import AtpConfig

    img = images(1, seed=2)[0]
    with Pipeline.from_dir(folder, "none", CFG) as pipe:
        pipe.use_strategy(UniformGrid(k=2, keep_ratio=0.25))
        assert pipe(img, "what colour").stats.visual_alive_per_layer.tolist() == [64, 64, 16, 16]
        pipe.use_strategy(AtpFreeStrategy(AtpConfig(4, (1, 3), grid=(GRID, GRID)), [0.3, 0.3], [0, 0], GRID * GRID))
        alive = pipe(img, "what colour").stats.visual_alive_per_layer.tolist()
        assert pipe.decoder.boundaries == [1, 3]
        assert alive[0] == 64 and alive[1] == alive[2] < 64 and alive[3] <= alive[2]


def test_atp_without_weights_falls_back(folder, caplog):
    with Pipeline.from_dir(folder, "atp", CFG) as pipe:
        assert isinstance(pipe.strategy, AtpFreeStrategy)
    assert "atp-free" in caplog.text


def test_bad_inputs(folder, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"GIF89a not really")
    with Pipeline.from_dir(folder, "none", CFG) as pipe:
        with pytest.raises(InputError, match="cannot read"):
            pipe(bad, "what")
        with pytest.raises(InputError, match="not found"):
            pipe(tmp_path / "missing.png", "what")
        with pytest.raises(InputError, match="empty"):
            pipe(images(1)[0], "   ")
        for mode in ("L", "RGBA", "CMYK", "P"):
            assert pipe(images(1)[0].convert(mode), "what").visual_in == 64
        with pytest.raises(InputError, match="does not fit"):
            pipe(images(1)[0], "what " * 400)
        with pytest.raises(InputError, match="unknown strategy"):
            pipe.set_strategy("magic")


def test_calibration_meets_the_budget_on_held_out_prompts(folder):
    imgs = images(16, seed=3)
    questions = ["what is in the picture", "describe the colour", "how many shapes are there", "is it red"]
    with Pipeline.from_dir(folder, "atp-free", CFG) as pipe:
        prompts = [pipe.prompt(im, questions[i % 4])[0] for i, im in enumerate(imgs)]
        config = pipe.strategy.config
        target = 24.0
        result = calibrate(pipe.decoder, prompts[:8], config, (4, 0, 0), target)
        held_out = AtpFreeStrategy(config, list(result.mass), list(result.stride), GRID * GRID)
        achieved = float(np.mean(average_tokens(pipe.decoder, prompts[8:], held_out)))
    assert abs(result.achieved - target) / target <= 0.05
    assert abs(achieved - target) / target <= 0.05, achieved


def test_calibrate_cli_writes_levels(folder, tmp_path):
    from click.testing import CliRunner

    from atp_cli.cli import cli
    from atp_cli.pruning.store import read_atp
    from converters.convert import find_pair

    records = []
    for i, im in enumerate(images(4, seed=9)):
        im.save(tmp_path / f"{i}.png")
        records.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nwhat is it"},
                                                               {"from": "gpt", "value": "a thing"}]})
    (tmp_path / "cal.json").write_text(json.dumps(records))
    res = CliRunner().invoke(cli, ["calibrate", str(folder), str(tmp_path / "cal.json"), "--budget", "20"],
                             standalone_mode=False, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    weights = read_atp(find_pair(folder)[1])
    assert weights is not None and weights.free_mass and 0 < weights.free_mass[0] <= 1
    res = CliRunner().invoke(cli, ["calibrate", str(folder), str(tmp_path / "cal.json"), "--budget", "65"],
                             standalone_mode=False)
    assert isinstance(res.exception, InputError) and "budget" in str(res.exception)
