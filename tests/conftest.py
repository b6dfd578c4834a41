"""Shared fixtures: offline environment and small experiment configs."""

from __future__ import annotations

import os
import warnings

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on the 2 cores: one torch thread each, so they do not
    # oversubscribe the CPU (two 2-thread OpenMP pools on 2 cores run several times slower).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
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
        "output": {"dir": str(tmp_path / "runs"), "overview": False},  # ~1 s of matplotlib per run; tested on its own
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


# The longest modules first: with `-n 2 --dist loadfile` each module runs on one worker in collection order,
# so starting the long ones early keeps one worker from finishing minutes before the other.
LONGEST_FIRST = [
    "serving/test_app.py",
    "engines/test_flower_deploy.py",
    "serving/test_failover.py",
    "e2e/test_resume_schemes.py",
    "engines/test_flower_secagg_nodes.py",
    "unlearning/test_forget.py",
    "inference/test_analytics.py",
    "inference/test_run_experts.py",
    "e2e/test_fault_tolerance.py",
    "reproduce/test_paper.py",
    "serving/test_pairs.py",
    "inference/test_split.py",
    "inference/test_multiaccess.py",
    "engines/test_parallel.py",
    "e2e/test_run.py",
    "engines/test_flower_cli.py",
    "models/test_loader.py",
    "runtime/test_runtime.py",
    "serving/test_chat_page.py",
    "engines/test_batched.py",
]


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module and among the rest is kept
