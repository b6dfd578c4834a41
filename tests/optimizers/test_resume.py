"""Every federated optimizer resumes exactly: its state travels in the checkpoint."""

import pytest
import torch

from fedintel.experiment import resume_experiment, run_experiment
from fedintel.optimizers import registered
from fedintel.tracking.checkpoint import latest_checkpoint

BUILTIN = ["fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


def _no_wall(rounds):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rounds]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_every_builtin_is_covered():
    assert set(BUILTIN) <= set(registered())


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "fedavg"])  # fedavg: tests/e2e/test_resume_schemes.py
def test_resume_after_interruption_equals_the_uninterrupted_run(tiny_cfg, tmp_path, name):
    cfg = tiny_cfg(optimizer={"name": name}, federation={"rounds": 3}, eval={"per_client": False})
    full = run_experiment(cfg, tmp_path / "full")
    run_experiment(cfg, tmp_path / "part", stop_after_round=1)
    resumed = resume_experiment(tmp_path / "part")
    assert _no_wall(resumed.rounds) == _no_wall(full.rounds)
    a, b = (latest_checkpoint(tmp_path / n)["state"] for n in ("full", "part"))
    assert _equal(a["global"], b["global"]) and _equal(a["optimizer"], b["optimizer"])
