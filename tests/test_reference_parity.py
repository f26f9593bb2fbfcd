"""The llama.cpp driver keeps the same tokens and gives the same logits as hard pruning in transformers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from atp_cli.driver import SegmentedDecoder  # noqa: E402
from atp_cli.prompt_input import Prompt, Span  # noqa: E402
from atp_cli.pruning.atp import AtpStrategy, ThresholdMLP  # noqa: E402
from atp_cli.pruning.baselines import FastV, PyramidDrop  # noqa: E402
from atp_cli.pruning.config import N_FEATURES, AtpConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.runtime.model import LlamaModel  # noqa: E402
from atp_cli.runtime.vision import ImageEncoder  # noqa: E402
from atp_cli.train.reference import pruned_logits  # noqa: E402
from converters.convert import ConvertOptions, convert, find_pair  # noqa: E402
from tests.test_convert_parity import GRID, hf_pixels, prompt_ids, sample_image  # noqa: E402
from tests.tiny_llava import build_tiny_llava  # noqa: E402

N_LAYER = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    ckpt = build_tiny_llava(root / "clip", "clip", text_layers=N_LAYER, seed=3)
    convert(ckpt, root / "out", ConvertOptions(outtype="f32", mmproj_type="f32"))
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(ckpt).eval()
    return ckpt, find_pair(root / "out"), hf


def atp_strategy() -> AtpStrategy:
    rng = np.random.default_rng(0)
    mlp = lambda b: ThresholdMLP(rng.standard_normal((8, N_FEATURES)) * 0.05, np.zeros(8),  # noqa: E731
                                 rng.standard_normal((2, 8)) * 0.05, np.array(b))
    cfg = AtpConfig(n_layer=N_LAYER, boundaries=(1, 3), grid=(GRID, GRID), hidden=8)
    return AtpStrategy(cfg, [mlp([0.55, 0.0]), mlp([0.9, 0.5])], n_visual=GRID * GRID)


class Recorder:
    def __init__(self, strategy) -> None:
        self.strategy, self.kept = strategy, []

    def boundaries(self, n_layer: int) -> list[int]:
        return self.strategy.boundaries(n_layer)

    def __call__(self, view):
        kept = self.strategy(view)
        self.kept.append(np.asarray(kept))
        return kept


@pytest.mark.parametrize("make", [atp_strategy, lambda: FastV(k=1, keep_ratio=0.5), lambda: PyramidDrop(0.5)],
                         ids=["atp", "fastv", "pdrop"])
def test_driver_matches_transformers_hard_pruning(setup, make):
    ckpt, (model_path, mmproj_path), hf = setup
    image = sample_image(5)
    before, image_ids, after = prompt_ids(ckpt)
    ids = torch.tensor([before + image_ids + after])
    ref_logits, ref_kept = pruned_logits(hf, ids, hf_pixels(ckpt, image), make(), image_ids[0])

    rec = Recorder(make())
    cfg = ContextConfig(n_ctx=256, n_batch=64, n_ubatch=64, type_k="f32", type_v="f32")
    with LlamaModel(model_path) as model, ImageEncoder(mmproj_path, model) as enc:
        rows = enc.encode(image)
        with SegmentedDecoder(model, rec.boundaries(model.n_layer), cfg) as dec:
            logits = dec.prefill(Prompt((Span.text(before), Span.image(rows), Span.text(after))), rec)
            alive = dec.stats.visual_alive_per_layer

    assert len(rec.kept) == len(ref_kept)
    for ours, theirs in zip(rec.kept, ref_kept):
        union = np.union1d(ours, theirs)
        assert len(np.intersect1d(ours, theirs)) >= 0.99 * len(union)
    assert any(len(k) < GRID * GRID for k in rec.kept)  # something was pruned
    assert alive[-1] == len(rec.kept[-1])
    assert np.abs(logits - ref_logits).max() <= 2e-3
