"""Every scheme (and the privacy wrappers) resumes exactly: a run stopped after a round and resumed gives the
uninterrupted run's metrics, client rows, events and final adapters. Tiny-llama, 3 rounds each."""

import sqlite3

import pytest
import torch

from fedintel.experiment import resume_experiment, run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint

TWO_DOMAINS = {"domains": ["tech_support", "trivia"]}

SCHEMES = {
    "fedavg": {},
    "clustered-given": {"federation": {"scheme": "clustered"}, "clustering": {"method": "given", "num_clusters": 2},
                        "data": {**TWO_DOMAINS, "partition": {"method": "by_domain"}}},
    "clustered-similarity": {"federation": {"scheme": "clustered"},
                             "clustering": {"method": "similarity", "num_clusters": 2}, "data": TWO_DOMAINS},
    "hierarchical": {"federation": {"scheme": "hierarchical"},
                     "hierarchy": {"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2}},
    "async-fedasync": {"federation": {"scheme": "async"}, "async": {"mode": "fedasync", "concurrency": 2}},
    "async-fedbuff": {"federation": {"scheme": "async"}, "async": {"mode": "fedbuff", "buffer_size": 2}},
    "central-dp": {"privacy": {"dp": "central", "noise_multiplier": 0.5, "clip_norm": 0.5}},
    "secure-aggregation": {"privacy": {"secure_aggregation": True}},
}


def _rows(run_dir, query):
    con = sqlite3.connect(run_dir / "metrics.db")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN == NaN here


@pytest.mark.parametrize("name", list(SCHEMES))
def test_stop_after_a_round_then_resume_equals_the_uninterrupted_run(tiny_cfg, tmp_path, name):
    sections = {k: dict(v) for k, v in SCHEMES[name].items()}
    fed = {"rounds": 3, "num_clients": 4, "clients_per_round": 3, **sections.pop("federation", {})}
    cfg = tiny_cfg(federation=fed, eval={"max_samples": 8, "per_client": False}, threads=1, **sections)
    full = run_experiment(cfg, tmp_path / "full")
    assert full.status == "finished"
    part = run_experiment(cfg, tmp_path / "part", stop_after_round=1)
    assert part.status == "interrupted" and len(part.rounds) == 2
    resumed = resume_experiment(tmp_path / "part")
    assert resumed.status == "finished"
    for query in ("SELECT round, name, value FROM round_metrics WHERE name != 'wall_s' ORDER BY round, name",
                  "SELECT round, client_id, name, value FROM client_metrics ORDER BY round, client_id, name",
                  "SELECT round, client_id, kind, message FROM events ORDER BY round, client_id, kind, message"):
        assert _rows(tmp_path / "part", query) == _rows(tmp_path / "full", query), query
    a, b = latest_checkpoint(tmp_path / "part"), latest_checkpoint(tmp_path / "full")
    assert a["round"] == b["round"] == 3
    assert _same_tensors(a["state"], b["state"])
    assert resumed.rounds[-1]["eval_loss"] < resumed.rounds[0]["eval_loss"]
