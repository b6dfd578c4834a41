"""Epsilon matches who actually took part: amplification by subsampling only under uniform random selection,
otherwise the worst client's epsilon over its actual releases, checked against dp_accounting by hand."""

from collections import Counter

import dp_accounting
import pytest

from fedintel.experiment import resume_experiment, run_experiment
from fedintel.privacy import budget, local_dp
from fedintel.privacy import dp as dp_mod
from fedintel.privacy.accountant import compute_epsilon

DELTA = 1e-5
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 96, 128, 256, 512]


def _by_hand(sigma: float, releases: list[list[int]]) -> float:
    """Worst client's epsilon: each release that held its update k times is a Gaussian with sigma / k."""
    per_client: dict[int, Counter] = {}
    for ids in releases:
        for cid, k in Counter(ids).items():
            per_client.setdefault(cid, Counter())[k] += 1
    worst = 0.0
    for rec in per_client.values():
        acc = dp_accounting.rdp.RdpAccountant(ORDERS)
        for k, n in rec.items():
            acc.compose(dp_accounting.GaussianDpEvent(sigma / k), n)
        worst = max(worst, acc.get_epsilon(DELTA))
    return worst


@pytest.fixture
def releases(monkeypatch):
    """Every DP aggregation's client ids, as the aggregator saw them."""
    seen: list[list[int]] = []
    real = dp_mod.DPAggregator.aggregate

    def spy(self, updates, global_state, ctx=None):
        seen.append([u.client_id for u in updates])
        return real(self, updates, global_state, ctx)

    monkeypatch.setattr(dp_mod.DPAggregator, "aggregate", spy)
    return seen


def test_fastest_k_is_accounted_by_actual_participation(tiny_cfg, tmp_path, releases):
    priv = {"dp": "central", "noise_multiplier": 1.0, "clip_norm": 0.5}
    fed = {"rounds": 3, "num_clients": 4, "clients_per_round": 2}
    cfg = tiny_cfg(federation=fed, privacy=priv, network={"enabled": True, "selection": "fastest_k"},
                   eval={"per_client": False})
    res = run_experiment(cfg, tmp_path / "fastest")
    assert len(releases) == 3
    assert res.final["epsilon"] == pytest.approx(_by_hand(1.0, releases), rel=1e-9)
    assert res.final["epsilon"] > compute_epsilon(1.0, 0.5, 3, DELTA)  # what amplification would have claimed
    # a resumed run rebuilds the participation record from the metrics store
    part = run_experiment(cfg, tmp_path / "resumed", stop_after_round=1)
    assert part.status == "interrupted"
    assert resume_experiment(tmp_path / "resumed").final["epsilon"] == pytest.approx(res.final["epsilon"], rel=1e-12)


def test_random_selection_still_claims_amplification(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"rounds": 2}, privacy={"dp": "central", "noise_multiplier": 1.0},
                   eval={"per_client": False})
    assert budget.amplified(cfg)
    res = run_experiment(cfg, tmp_path / "random")
    assert res.final["epsilon"] == pytest.approx(compute_epsilon(1.0, 3 / 4, 2, DELTA), rel=1e-12)


def test_fedbuff_counts_each_flush_as_a_release(tiny_cfg, tmp_path, releases):
    cfg = tiny_cfg(federation={"scheme": "async", "rounds": 2, "clients_per_round": 4},
                   network={"enabled": True}, privacy={"dp": "central", "noise_multiplier": 1.0},
                   eval={"per_client": False}, **{"async": {"mode": "fedbuff", "buffer_size": 2, "concurrency": 2}})
    assert not budget.amplified(cfg)
    res = run_experiment(cfg, tmp_path / "fedbuff")
    assert len(releases) >= 3
    assert res.final["epsilon"] == pytest.approx(_by_hand(1.0, releases), rel=1e-9)


def test_async_local_dp_counts_each_upload(tiny_cfg, tmp_path, monkeypatch):
    uploads: list[int] = []
    real = local_dp.privatize_local

    def spy(delta, clip, sigma, gen):
        uploads.append(len(uploads))
        return real(delta, clip, sigma, gen)

    monkeypatch.setattr(local_dp, "privatize_local", spy)
    cfg = tiny_cfg(federation={"scheme": "async", "rounds": 2, "clients_per_round": 3}, network={"enabled": True},
                   privacy={"dp": "local", "noise_multiplier": 2.0}, eval={"per_client": False},
                   **{"async": {"mode": "fedasync", "concurrency": 2}})
    res = run_experiment(cfg, tmp_path / "local")
    import sqlite3

    con = sqlite3.connect(tmp_path / "local" / "metrics.db")
    per_client = dict(con.execute("SELECT client_id, SUM(value) FROM client_metrics WHERE name='dp_releases_x1' "
                                  "GROUP BY client_id").fetchall())
    con.close()
    assert sum(per_client.values()) == len(uploads)  # every noised upload is in the record
    worst = max(per_client.values())
    # replace-one sensitivity 2C: multiplier sigma / 2 per upload, no amplification
    acc = dp_accounting.rdp.RdpAccountant(ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(1.0), int(worst))
    assert res.final["epsilon"] == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
