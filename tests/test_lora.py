"""LoRA adapters: saved factors merged into dense weights give the adapted model's outputs."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from atp_cli.errors import ModelError  # noqa: E402
from atp_cli.train import lora  # noqa: E402


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def test_merge_reproduces_the_adapted_model(tmp_path):
    base = tiny_llama()
    adapted = copy.deepcopy(base)
    params = lora.inject(adapted.model, rank=4)
    assert len(params) == 2 * len(lora.TARGETS) * 2  # A and B for 7 linear layers in each of 2 blocks
    with torch.no_grad():
        for p in params:  # B starts at zero: give both factors values
            p.normal_(0, 0.2)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        want = adapted(ids).logits
    path = tmp_path / "lora.safetensors"
    lora.save(adapted.model, path)
    merged = copy.deepcopy(base)
    assert lora.merge(merged.model, path) == 2 * len(lora.TARGETS)
    with torch.no_grad():
        got = merged(ids).logits
        plain = base(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(plain, want, atol=1e-3)  # the adapters changed the model


def test_merge_rejects_adapters_of_another_model(tmp_path):
    other = tiny_llama()
    lora.inject(other.model, rank=2)
    path = tmp_path / "lora.safetensors"
    lora.save(other.model, path)
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    with pytest.raises(ModelError, match="does not fit"):
        lora.merge(LlamaForCausalLM(cfg).model, path)
