"""Shared fixtures of the serving tests: a small clustered-run directory with PEFT adapters, a service in a
background thread, and a check that no device process outlives a module."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from fedintel.processes import child_pids
from fedintel.serving.scheduler import GenRequest

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


def run_direct(sched, prompts: list[list[int]], max_tokens: int, eos: frozenset, model_id: str = "base",
               seconds: float = 60) -> tuple[list[GenRequest], list[list]]:
    """Queue every prompt on scheduler ``sched`` at once (one turn finds them all queued), bypassing the HTTP
    front and the routing, and wait until each request has finished; each request's emitted events."""
    emits: list[list] = [[] for _ in prompts]
    reqs = [GenRequest(list(p), max_tokens, eos, lambda k, v, e=emits[i]: e.append((k, v)), model_id)
            for i, p in enumerate(prompts)]
    with sched.cond:  # the loop wakes to find all of them queued
        for r in reqs:
            sched.submit(r)
    deadline = time.monotonic() + seconds
    while not all(any(k != "token" for k, _ in e) for e in emits):
        if time.monotonic() > deadline:
            lost = [i for i, e in enumerate(emits) if not any(k != "token" for k, _ in e)]
            raise AssertionError(f"requests {lost} never finished (lost between a dead path and the failover?)")
        time.sleep(0.05)
    return reqs, emits
