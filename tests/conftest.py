"""Shared fixtures: offline environment and small experiment configs."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
warnings.filterwarnings("ignore", category=FutureWarning)

import pytest  # noqa: E402

from fedintel.config import ExperimentConfig, parse_config  # noqa: E402


def tiny_config(tmp_path, **sections) -> ExperimentConfig:
    """A 2-round tiny-llama experiment on real chatterbot text, small enough for unit tests."""
    raw = {
        "name": "tiny",
        "model": {"name": "tiny-llama"},
        "data": {"dataset": "chatterbot", "max_length": 32, "samples_per_client": 16, "global_eval_samples": 16},
        "federation": {"rounds": 2, "num_clients": 4, "clients_per_round": 3, "local_steps": 2,
                       "batch_size": 4, "micro_batch_size": 2, "lr": 0.01, "seed": 0},
        "eval": {"max_samples": 8},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw)


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda **sections: tiny_config(tmp_path, **sections)
