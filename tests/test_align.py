"""Patch-to-word alignment: projector outputs move onto the word embeddings of what covers each patch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from atp_cli.data.scenes import Example, make_example  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.train.align import AlignConfig, WordTargets, align_projector, target_words  # noqa: E402
from atp_cli.train.model_io import load_model  # noqa: E402
from tests.tiny_llava import build_tiny_llava  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("align") / "ckpt", "clip", text_layers=2)


def test_targets_are_means_of_word_embeddings(checkpoint):
    model, tokenizer, _ = load_model(checkpoint, 0)
    embed = model.model.language_model.embed_tokens.weight
    targets = WordTargets(tokenizer, embed)
    red = embed[tokenizer(" red", add_special_tokens=False)["input_ids"]].mean(0)
    rows = targets([("red",), ("red", "circle")])
    torch.testing.assert_close(rows[0], red)
    torch.testing.assert_close(rows[1], (red + targets.word("circle")) / 2)


def test_alignment_learns_and_reports_patch_accuracy(checkpoint, tmp_path):
    train = [make_example("train", i) for i in range(12)]
    held_out = [make_example("val", i) for i in range(4)]
    seen = []
    out = align_projector(checkpoint, train, tmp_path, AlignConfig(steps=60, batch=4, lr=3e-3), held_out,
                          on_step=seen.append)
    assert seen[-1].loss < 0.5 * seen[0].loss
    right, of = seen[-1].validation["patches"]
    assert of == 1000 and 0 <= right <= of
    assert {"linear_1.weight", "linear_2.weight"} <= set(load_file(str(out / "projector.safetensors")))


def test_examples_without_patch_knowledge_are_refused(checkpoint, tmp_path):
    plain = Example(make_example("train", 0).image, "q", "a", "colour")
    with pytest.raises(InputError, match="patches"):
        align_projector(checkpoint, [plain], tmp_path, AlignConfig(steps=1))


def test_targets_can_leave_position_to_the_sequence():
    ex = make_example("train", 5)
    full, bare = target_words(ex, 24), target_words(ex, 24, positions=False)
    it = ex.items[0]
    centre = min(it.y // 14, 23) * 24 + min(it.x // 14, 23)
    assert full[centre][:2] == bare[centre] == (it.colour, it.shape) and len(full[centre]) == 4


def test_projector_reads_several_tower_layers_and_its_file_says_which(tmp_path):
    from safetensors.numpy import save_file

    from atp_cli.default_model import FEATURE_LAYER, read_projector

    ckpt = build_tiny_llava(tmp_path / "ckpt", "clip", text_layers=2, feature_layer=[1, -2])
    out = align_projector(ckpt, [make_example("train", i) for i in range(4)], tmp_path / "out",
                          AlignConfig(steps=2, batch=2))
    weights, layers = read_projector(out / "projector.safetensors")
    assert layers == [1, -2]  # assembling it onto other features would be refused or wrong
    assert weights["linear_1.weight"].shape[1] == 2 * 32  # two hidden states of the tiny tower, concatenated
    save_file(weights, str(tmp_path / "bare.safetensors"))  # a file from before the metadata: the default layer
    assert read_projector(tmp_path / "bare.safetensors")[1] == FEATURE_LAYER
