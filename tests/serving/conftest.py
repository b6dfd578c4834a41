"""Shared fixtures of the serving tests: a small clustered-run directory with PEFT adapters, a service in a
background thread, and a check that no device process outlives a module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedintel.processes import child_pids

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def no_orphans():
    """Every module must leave no child process behind (found with psutil)."""
    yield
    left = child_pids(command="fedintel")  # device processes only
    assert left == [], f"device processes left behind: {left}"


def make_run_dir(root: Path, model: str, num_layers: int | None, names: tuple[str, ...]) -> Path:
    """A run directory as a clustered run leaves it: adapters/<name> (random LoRA, PEFT format) and
    adapters/clients.json."""
    import json

    from peft import LoraConfig, get_peft_model

    from fedintel.config import ModelConfig
    from fedintel.models.loader import load_base_model

    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        base = load_base_model(ModelConfig(name=model, num_layers=num_layers)).model
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
        peft.save_pretrained(str(root / "adapters" / name))
    (root / "adapters" / "clients.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    return root
