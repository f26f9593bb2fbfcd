"""The oracle stage-2 loop of research/grounding_probe.py: only the LoRA adapters learn from the given rows, and every
validation scores every turn."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from atp_cli.train.data import load_samples  # noqa: E402
from research.grounding_probe import oracle_model, train_on_oracle  # noqa: E402
from tests.tiny_llava import build_tiny_llava, write_colour_records  # noqa: E402


def test_only_the_adapters_learn_and_each_validation_scores_every_turn(tmp_path, capsys):
    ckpt = build_tiny_llava(tmp_path / "ckpt", "clip", grid=24, patch=1, text_layers=2)  # 576 visual tokens
    samples = load_samples(write_colour_records(tmp_path, more_turns=True))  # 3 records x 3 turns
    model, tok = oracle_model(ckpt)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = 0.05 * torch.randn(576, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))

    train_on_oracle(model, tok, samples * 2, samples, lambda s: rows, lr=1e-2, steps=2, every=1)

    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert adapters and any(p.abs().sum() > 0 for n, p in adapters.items() if "lora_B" in n)  # B starts at zero
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    validations = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("val ")]
    assert len(validations) == 2  # after each of the two steps
    assert all(re.search(r"\d+/9 = ", line) for line in validations)
