"""Shared fixtures: tiny random llama GGUF models written per test session."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from converters.random_llama import LlamaShape, random_weights, write_llama_gguf

TINY = LlamaShape(n_layer=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128)


@pytest.fixture(scope="session")
def tiny_weights() -> dict[str, np.ndarray]:
    return random_weights(TINY, seed=1)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_weights):
    return write_llama_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf", TINY, tiny_weights)


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf):
    from atp_cli.runtime.log import quiet_llama_logs
    from atp_cli.runtime.model import LlamaModel

    quiet_llama_logs(logging.WARNING)
    model = LlamaModel(tiny_gguf)
    yield model
    model.close()
