"""Shared fixtures: the links' TLS identity, saved random models, and a check that no device process outlives
a test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedintel.inference.protocol import LinkSecurity
from fedintel.processes import child_pids

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def links(tmp_path_factory) -> LinkSecurity:
    """This test process's mutual-TLS identity ('origin') under a CA made for the session; device processes
    started with it get their own certificates of the same CA."""
    return LinkSecurity.fresh(tmp_path_factory.mktemp("tls"), "origin")


@pytest.fixture(autouse=True, scope="module")
def no_orphans():
    """Every module must leave no child process behind (found with psutil)."""
    yield
    left = child_pids(command="fedintel")  # device processes only
    assert left == [], f"device processes left behind: {left}"


def save_random_llama(path: Path, hidden: int, layers: int, seed: int, std: float = 0.2,
                      noise_of: Path | None = None, noise: float = 0.0) -> Path:
    """A random Llama with SmolLM2's tokenizer saved as a local model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fedintel.models import sources

    tok = AutoTokenizer.from_pretrained(sources.smollm2_dir())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    if noise_of is not None:
        model = LlamaForCausalLM.from_pretrained(noise_of)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    else:
        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=std,
            tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """'large' (3 layers, hidden 64), 'small' (1 layer, hidden 32), 'near' (large + small noise)."""
    root = tmp_path_factory.mktemp("models")
    large = save_random_llama(root / "large", 64, 3, seed=1)
    return {
        "large": large,
        "small": save_random_llama(root / "small", 32, 1, seed=2),
        "near": save_random_llama(root / "near", 64, 3, seed=3, noise_of=large, noise=0.01),
    }
