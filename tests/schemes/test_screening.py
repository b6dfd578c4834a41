"""What a client reports about itself is checked by every scheme: samples are capped to its shard, impossible
FLOPs/bytes/losses are rejected before they feed the clock, and every scheme checks the update's base version."""

import dataclasses
import sqlite3

import pytest
import torch

from fedintel.aggregation.validate import ClaimLimits, UpdateRejected, check_claims
from fedintel.experiment import run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint
from fedintel.types import Update

LIMITS = ClaimLimits(max_samples=14, max_steps=2, max_tokens=256, max_flops=1e9, dense_bytes=1000)


def _update(**kw) -> Update:
    base = Update(0, {"w": torch.zeros(2)}, 14, 0, 1.5, 2, 100, flops=1e8)
    return dataclasses.replace(base, **kw)


def test_claimed_samples_are_capped_to_the_shard():
    u, note = check_claims(_update(num_samples=10**12), LIMITS)
    assert u.num_samples == 14 and "capped" in note
    u, note = check_claims(_update(), LIMITS)
    assert u.num_samples == 14 and note is None


@pytest.mark.parametrize("claim", [
    {"flops": 1e21}, {"flops": -1.0}, {"flops": float("nan")}, {"steps": 50}, {"tokens": -3}, {"tokens": 10**9},
    {"train_loss": float("nan")}, {"train_loss": -0.1}, {"train_loss": float("inf")},
    {"wire_bytes": 0}, {"wire_bytes": 10**9}, {"num_samples": 0}, {"num_samples": 2.5},
])
def test_impossible_self_reports_are_rejected(claim):
    with pytest.raises(UpdateRejected):
        check_claims(_update(**claim), LIMITS)


def _hooked(monkeypatch, edit):
    from fedintel.engines.local import LocalEngine
    from fedintel.training.mods import ClientMods

    real_init = LocalEngine.__init__
    monkeypatch.setattr(LocalEngine, "__init__", lambda self, world, mods=None: real_init(self, world, ClientMods(update=(edit,))))


def _events(run_dir):
    con = sqlite3.connect(run_dir / "metrics.db")
    try:
        return con.execute("SELECT round, client_id, kind, message FROM events ORDER BY round, client_id").fetchall()
    finally:
        con.close()


def test_a_client_claiming_a_huge_shard_does_not_own_the_average(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(federation={"clients_per_round": 4, "rounds": 1})
    honest = run_experiment(cfg, tmp_path / "honest")

    def inflate(update, job):
        if update.client_id == 0:
            update.num_samples = 10**12
        return update

    _hooked(monkeypatch, inflate)
    res = run_experiment(cfg, tmp_path / "inflated")
    a, b = latest_checkpoint(res.run_dir)["state"]["global"], latest_checkpoint(honest.run_dir)["state"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e[1:3] for e in _events(res.run_dir)] == [(0, "capped")]


def test_impossible_compute_is_rejected_before_it_feeds_the_clock(tiny_cfg, tmp_path, monkeypatch):
    def lie(update, job):
        if update.client_id == 0:
            update.flops = 1e21
        return update

    _hooked(monkeypatch, lie)
    cfg = tiny_cfg(federation={"clients_per_round": 4, "rounds": 1}, network={"enabled": True})
    res = run_experiment(cfg, tmp_path / "run")
    assert [e[1:3] for e in _events(res.run_dir)] == [(0, "rejected")]
    assert res.rounds[1]["clients_accepted"] == 3 and res.rounds[1]["sim_round_s"] < 3600


SCHEMES = {
    "clustered": {"federation": {"scheme": "clustered", "clients_per_round": 4, "rounds": 1},
                  "clustering": {"method": "given", "num_clusters": 2},
                  "data": {"domains": ["tech_support", "trivia"], "partition": {"method": "by_domain"}}},
    "hierarchical": {"federation": {"scheme": "hierarchical", "clients_per_round": 4, "rounds": 1}},
    "async": {"federation": {"scheme": "async", "clients_per_round": 4, "rounds": 1}, "network": {"enabled": True},
              "async": {"mode": "fedbuff", "concurrency": 4, "buffer_size": 2}},
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_rejects_an_update_that_lies_about_its_base_version(tiny_cfg, tmp_path, monkeypatch, scheme):
    def wrong_base(update, job):
        if update.client_id == 0:
            update.base_version = 99
        return update

    _hooked(monkeypatch, wrong_base)
    res = run_experiment(tiny_cfg(**SCHEMES[scheme]), tmp_path / scheme)
    rejected = [e for e in _events(res.run_dir) if e[2] == "rejected"]
    assert rejected and all(e[1] == 0 and "trained on version 99" in e[3] for e in rejected)
