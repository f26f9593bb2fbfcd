"""The packed projector stage: one sequence per image computes each question exactly as alone, and it learns."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from atp_cli.errors import InputError, ModelError  # noqa: E402
from atp_cli.image_input import load_image, pixel_values  # noqa: E402
from atp_cli.train.data import encode_packed, encode_sample, load_samples  # noqa: E402
from atp_cli.train.model_io import image_setup, load_model  # noqa: E402
from atp_cli.train.projector import (FeatureCache, ProjectorConfig, lr_factor, packed_loss,  # noqa: E402
                                     train_projector)
from tests.tiny_llava import build_tiny_llava, write_colour_records  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("projector")
    ckpt = build_tiny_llava(root / "ckpt", "clip", text_layers=3)
    data = write_colour_records(root, more_turns=True)
    return ckpt, data


def _one_record(setup, index: int):
    """(model, record `index`, its packed tokens, its cached tower features, and `single(turn)`: the turn's
    (mean answer-token loss, answer tokens) from the model's own single-turn forward, the independent reference)."""
    ckpt, data = setup
    model, tokenizer, _ = load_model(ckpt, 0)
    size, n_visual, mean, std = image_setup(model, ckpt)
    image_id = model.config.image_token_index
    sample = load_samples(data)[index]
    packed = encode_packed(tokenizer, sample, image_id, n_visual)
    features = FeatureCache(model, size, mean, std)(sample.image).float()
    pixels = torch.from_numpy(pixel_values(load_image(sample.image), size, mean, std))[None]

    def single(turn: tuple[str, str]) -> tuple[float, int]:
        tokens = encode_sample(tokenizer, type(sample)(sample.image, (turn,)), image_id, n_visual)
        loss = model(input_ids=torch.from_numpy(tokens.input_ids)[None], pixel_values=pixels,
                     labels=torch.from_numpy(tokens.labels)[None]).loss
        return float(loss), int((tokens.labels != -100).sum())

    return model, sample, packed, features, single


def test_packed_turns_equal_single_turn_examples(setup):
    model, sample, packed, features, single = _one_record(setup, 1)
    assert (packed.block == 0).sum() > len(packed.visual) and packed.block.max() == len(sample.turns)
    with torch.no_grad():
        total, count = packed_loss(model, packed, features)
        singles = [single(turn) for turn in sample.turns]
    assert count == sum(n for _, n in singles)
    # the tower features are cached in float16; everything else is the same computation
    assert float(total) == pytest.approx(sum(loss * n for loss, n in singles), rel=2e-3)


def test_a_turn_never_sees_another_turn(setup):
    ckpt, data = setup
    _, tokenizer, _ = load_model(ckpt, 0)
    packed = encode_packed(tokenizer, load_samples(data)[0], 5, 16)
    allowed = packed.allowed()
    for i in np.flatnonzero(packed.block == 2):
        assert not allowed[i, packed.block == 1].any() and allowed[i, packed.block == 0].all()
        assert packed.positions[i] < (packed.block == 0).sum() + (packed.block == 2).sum()


def test_projector_and_lora_learn_and_are_saved(setup, tmp_path):
    ckpt, data = setup
    seen = []
    out = train_projector(ckpt, data, tmp_path / "out", ProjectorConfig(steps=30, accumulate=3, lr=1e-2, llm_lr=1e-2,
                                                                         lora_rank=4, save_every=10),
                          on_step=seen.append)
    assert np.mean([s.loss for s in seen[-3:]]) < 0.85 * np.mean([s.loss for s in seen[:3]])
    projector = load_file(str(out / "projector.safetensors"))
    assert {"linear_1.weight", "linear_2.weight"} <= set(projector)
    assert any(k.endswith("lora_A.weight") for k in load_file(str(out / "lora.safetensors")))


def test_a_zero_projector_rate_keeps_it_frozen_while_lora_learns(setup, tmp_path):
    ckpt, data = setup
    model, _, _ = load_model(ckpt, 0)
    start = {k: v.numpy() for k, v in model.model.multi_modal_projector.state_dict().items()}
    out = train_projector(ckpt, data, tmp_path / "out", ProjectorConfig(steps=3, accumulate=2, lr=0.0, llm_lr=1e-2,
                                                                         lora_rank=4, warmup=1))
    saved = load_file(str(out / "projector.safetensors"))
    assert all(np.array_equal(saved[k], start[k]) for k in start)
    assert any(np.abs(v).sum() > 0 for k, v in load_file(str(out / "lora.safetensors")).items() if "lora_B" in k)
    with pytest.raises(InputError, match="nothing to train"):
        train_projector(ckpt, data, tmp_path / "none", ProjectorConfig(steps=1, lr=0.0))


def test_validation_counts_every_turn_by_type(setup, tmp_path):
    ckpt, data = setup
    seen = []
    train_projector(ckpt, data, tmp_path / "out", ProjectorConfig(steps=2, accumulate=1, validate_every=1),
                    on_step=seen.append, validation=data)
    assert all(s.validation is not None for s in seen)
    right, asked = seen[-1].validation["all"]
    assert asked == 9 and 0 <= right <= asked


def test_a_resumed_run_continues_exactly_where_the_snapshot_stopped(setup, tmp_path):
    ckpt, data = setup
    cfg = ProjectorConfig(steps=4, accumulate=2, lr=1e-2, llm_lr=1e-2, lora_rank=4, save_every=2, warmup=3)
    whole = []
    straight = train_projector(ckpt, data, tmp_path / "straight", cfg, on_step=whole.append)
    train_projector(ckpt, data, tmp_path / "split", ProjectorConfig(**{**vars(cfg), "steps": 2}))
    rest = []
    resumed = train_projector(ckpt, data, tmp_path / "split",
                              ProjectorConfig(**{**vars(cfg), "resume_from": tmp_path / "split"}), on_step=rest.append)
    assert [s.step for s in rest] == [2, 3]
    assert [s.loss for s in rest] == pytest.approx([s.loss for s in whole[2:]], rel=1e-5)
    for name in ("lora.safetensors", "projector.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert set(a) == set(b) and all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_a_run_can_start_from_finished_adapters(setup, tmp_path):
    """init_lora: the adapters begin as the file holds them (at rate 0 they end so), and the questions the fresh
    adapters start on are answered with a lower loss from there."""
    ckpt, data = setup
    cfg = ProjectorConfig(steps=12, accumulate=2, lr=0.0, llm_lr=1e-2, lora_rank=4, warmup=1)
    first = train_projector(ckpt, data, tmp_path / "first", cfg)
    fresh, started = [], []
    train_projector(ckpt, data, tmp_path / "fresh", ProjectorConfig(**{**vars(cfg), "steps": 2, "llm_lr": 0.0}),
                    on_step=fresh.append)
    kept = train_projector(ckpt, data, tmp_path / "kept", ProjectorConfig(
        **{**vars(cfg), "steps": 2, "llm_lr": 0.0, "init_lora": first / "lora.safetensors"}), on_step=started.append)
    a, b = load_file(str(first / "lora.safetensors")), load_file(str(kept / "lora.safetensors"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(s.loss < f.loss for s, f in zip(started, fresh))
    with pytest.raises(InputError, match="lora_rank"):
        train_projector(ckpt, data, tmp_path / "x", ProjectorConfig(steps=1, lr=1e-3, init_lora=first / "lora.safetensors"))


def test_resuming_needs_the_snapshots_step_and_a_matching_adapter(setup, tmp_path):
    ckpt, data = setup
    cfg = ProjectorConfig(steps=2, accumulate=1, lr=0.0, llm_lr=1e-2, lora_rank=4)
    out = train_projector(ckpt, data, tmp_path / "run", cfg)
    (out / "trainer_state.pt").unlink()
    with pytest.raises(InputError, match="how many steps"):
        train_projector(ckpt, data, tmp_path / "more", ProjectorConfig(**{**vars(cfg), "steps": 4, "resume_from": out}))
    with pytest.raises(InputError, match="nothing to do"):
        train_projector(ckpt, data, tmp_path / "more", ProjectorConfig(**{**vars(cfg), "resume_from": out,
                                                                          "resumed_steps": 2}))
    with pytest.raises(ModelError, match="another rank"):
        train_projector(ckpt, data, tmp_path / "more", ProjectorConfig(**{**vars(cfg), "steps": 4, "lora_rank": 2,
                                                                          "resume_from": out, "resumed_steps": 2}))
    seen = []
    train_projector(ckpt, data, tmp_path / "more", ProjectorConfig(**{**vars(cfg), "steps": 3, "resume_from": out,
                                                                     "resumed_steps": 2}), on_step=seen.append)
    assert [s.step for s in seen] == [2]


def test_the_learning_rate_warms_up_stays_and_decays_to_zero_at_the_last_step():
    kept = ProjectorConfig(steps=10, warmup=4)
    assert [lr_factor(k, kept) for k in range(10)] == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 7)
    decayed = ProjectorConfig(steps=10, warmup=4, decay_from=6)
    assert [lr_factor(k, decayed) for k in range(10)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert lr_factor(9, ProjectorConfig(steps=10, warmup=1, decay_from=0)) == pytest.approx(0.1)


def test_a_constant_rate_snapshot_resumes_into_its_decay_as_one_decayed_run(setup, tmp_path):
    ckpt, data = setup
    cfg = ProjectorConfig(steps=4, accumulate=2, lr=0.0, llm_lr=1e-2, lora_rank=4, save_every=2, warmup=1,
                          decay_from=2)
    whole = []
    straight = train_projector(ckpt, data, tmp_path / "straight", cfg, on_step=whole.append)
    train_projector(ckpt, data, tmp_path / "split", ProjectorConfig(**{**vars(cfg), "steps": 2, "decay_from": None}))
    rest = []
    resumed = train_projector(ckpt, data, tmp_path / "split",
                              ProjectorConfig(**{**vars(cfg), "resume_from": tmp_path / "split"}), on_step=rest.append)
    assert [s.loss for s in rest] == pytest.approx([s.loss for s in whole[2:]], rel=1e-5)
    a, b = load_file(str(straight / "lora.safetensors")), load_file(str(resumed / "lora.safetensors"))
    assert all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    constant = train_projector(ckpt, data, tmp_path / "constant", ProjectorConfig(**{**vars(cfg), "decay_from": None}))
    c = load_file(str(constant / "lora.safetensors"))
    assert not all(np.allclose(a[k], c[k], rtol=1e-5, atol=1e-7) for k in a)  # the decay did change the updates
    with pytest.raises(InputError, match="decay_from"):
        train_projector(ckpt, data, tmp_path / "bad", ProjectorConfig(**{**vars(cfg), "decay_from": 4}))


def test_a_turns_weight_scales_its_single_turn_loss(setup):
    """Weight 1 on one turn and 0 on the others gives that turn's own loss (the model's single-turn forward)."""
    model, sample, packed, features, single = _one_record(setup, 2)
    with torch.no_grad():
        plain = packed_loss(model, packed, features)
        ones = packed_loss(model, packed, features, np.ones(len(sample.turns)))
        assert float(ones[0]) == pytest.approx(float(plain[0]), rel=1e-6) and ones[1] == plain[1]
        for k, turn in enumerate(sample.turns):
            total, count = packed_loss(model, packed, features, np.eye(len(sample.turns))[k] * 2.5)
            alone, n = single(turn)
            assert count == pytest.approx(2.5 * n)
            assert float(total) / count == pytest.approx(alone, rel=2e-3)


def _typed(data, out, first_only: bool):
    """`data`'s records with question types; the later turns' (type, answer) pairs are never a first turn's."""
    import json

    records = [json.loads(line) for line in data.read_text().splitlines()]
    for r in records:
        r["kinds"] = ["colour", "check", "colour"]
        if first_only:
            r["conversations"] = r["conversations"][:2]
    out.write_text("\n".join(json.dumps(r) for r in records))
    return out


def test_weighting_toward_first_turns_trains_as_first_turns_alone_would(setup, tmp_path):
    ckpt, data = setup
    cfg = ProjectorConfig(steps=3, accumulate=2, lr=0.0, llm_lr=1e-2, lora_rank=4, warmup=1)
    typed = _typed(data, data.parent / "typed.jsonl", first_only=False)
    firsts = _typed(data, data.parent / "firsts.jsonl", first_only=True)
    weighted, alone, plain = [], [], []
    a = train_projector(ckpt, typed, tmp_path / "a", ProjectorConfig(**{**vars(cfg), "weight_first": True}),
                        on_step=weighted.append)
    b = train_projector(ckpt, firsts, tmp_path / "b", cfg, on_step=alone.append)
    train_projector(ckpt, typed, tmp_path / "c", cfg, on_step=plain.append)
    assert [s.loss for s in weighted] == pytest.approx([s.loss for s in alone], rel=2e-3)
    assert [s.loss for s in plain] != pytest.approx([s.loss for s in alone], rel=2e-3)  # the later turns count
    la, lb = load_file(str(a / "lora.safetensors")), load_file(str(b / "lora.safetensors"))
    assert all(np.allclose(la[k], lb[k], rtol=1e-3, atol=1e-5) for k in la)
    with pytest.raises(InputError, match="kinds"):
        train_projector(ckpt, data, tmp_path / "untyped", ProjectorConfig(**{**vars(cfg), "weight_first": True}))
