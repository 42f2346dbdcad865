"""Fixtures for model tests: a tiny random LLaMA-style backbone folder (built offline, once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """config.json + model.safetensors + tokenizer files of a 2-layer, width-32 LlamaForCausalLM."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama")
