"""The three schemes: equivalences with FedAvg in their degenerate settings, and small real runs."""

import pytest
import torch

from fedintel.experiment import build_scheme, run_experiment
from fedintel.schemes.synchronous import FedAvgScheme
from fedintel.world import build_world

DOMAINS = {"dataset": "chatterbot", "domains": ["tech_support", "trivia"], "partition": {"method": "by_domain"},
           "samples_per_client": 16, "global_eval_samples": 16}


def run_rounds(scheme, rounds):
    state = scheme.initial_state()
    records = []
    for r in range(1, rounds + 1):
        state, rec = scheme.run_round(r, state)
        records.append(rec)
    return state, records


def test_clustered_given_equals_independent_fedavg_per_cluster(tiny_cfg):
    cfg = tiny_cfg(data=DOMAINS, federation={"scheme": "clustered", "clients_per_round": 4},
                   clustering={"method": "given", "num_clusters": 2}, eval={"per_client": False})
    world = build_world(cfg)
    clustered = build_scheme(cfg, world, reporter=None)
    state, records = run_rounds(clustered, 2)
    assert state["assignment"] == [0, 1, 0, 1]  # round-robin over the sorted domains
    assert records[-1].metrics["cluster_purity"] == 1.0
    for k in (0, 1):
        members = [c for c, a in enumerate(state["assignment"]) if a == k]

        class MembersOnly(FedAvgScheme):
            def choose_clients(self, round_idx, candidates, n, members=members):
                return members

        alone = build_scheme(cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"scheme": "fedavg"})}), world, None)
        alone.__class__ = MembersOnly
        solo_state, _ = run_rounds(alone, 2)
        for key, t in solo_state["global"].items():
            torch.testing.assert_close(state["clusters"][k][key], t, rtol=0, atol=1e-7)


def _fedavg_losses(cfg, tmp_path, name):
    return [r["eval_loss"] for r in run_experiment(cfg, tmp_path / name).rounds]


def test_hierarchical_with_one_edge_and_kappa_one_equals_fedavg(tiny_cfg, tmp_path):
    flat = _fedavg_losses(tiny_cfg(), tmp_path, "flat")
    hier = tiny_cfg(federation={"scheme": "hierarchical"},
                    hierarchy={"tiers": [{"nodes": 1, "period": 1}], "cloud_period": 1, "personalize": False})
    assert _fedavg_losses(hier, tmp_path, "hier") == pytest.approx(flat, rel=1e-6)


def test_async_zero_staleness_full_buffer_equals_sync_fedavg(tiny_cfg, tmp_path):
    sync = _fedavg_losses(tiny_cfg(federation={"clients_per_round": 4}), tmp_path, "sync")
    asy = tiny_cfg(federation={"scheme": "async", "clients_per_round": 4},
                   **{"async": {"mode": "fedbuff", "buffer_size": 4, "concurrency": 4, "wait_for_new_version": True}})
    res = run_experiment(asy, tmp_path / "async")
    assert [r["eval_loss"] for r in res.rounds] == pytest.approx(sync, rel=1e-6)
    assert all(r["mean_staleness"] == 0 for r in res.rounds[1:])


def test_async_fedasync_is_deterministic_and_reports_staleness(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"scheme": "async", "rounds": 3, "clients_per_round": 2},
                   network={"devices": {"distribution": "lognormal", "spread": 1.0}},
                   **{"async": {"mode": "fedasync", "concurrency": 3, "staleness": "hinge", "max_staleness": 1}})
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    assert [r["eval_loss"] for r in a.rounds] == [r["eval_loss"] for r in b.rounds]
    assert [r["sim_time_s"] for r in a.rounds] == [r["sim_time_s"] for r in b.rounds]
    times = [r["sim_time_s"] for r in a.rounds[1:]]
    assert times == sorted(times) and times[0] > 0
    assert any(r.get("max_staleness", 0) >= 1 for r in a.rounds[1:])  # 3 in flight: later arrivals are stale
    assert a.rounds[-1]["eval_loss"] < a.rounds[0]["eval_loss"]


def test_hierarchical_two_edges_saves_cloud_traffic(tiny_cfg, tmp_path):
    flat = run_experiment(tiny_cfg(federation={"rounds": 4}), tmp_path / "flat")
    hier = run_experiment(tiny_cfg(federation={"scheme": "hierarchical", "rounds": 4},
                                   network={"edge_servers": 2},
                                   hierarchy={"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2}), tmp_path / "hier")
    assert hier.rounds[-1]["cum_bytes_cloud"] < flat.rounds[-1]["cum_bytes_cloud"]
    assert {"client_eval_loss", "global_client_eval_loss"} <= set(hier.rounds[-1])
    assert set(hier.adapters) == {"global", "edge_0", "edge_1"}


@pytest.mark.parametrize("method", ["similarity", "ifca"])
def test_clustered_similarity_and_ifca_run_and_report_purity(tiny_cfg, tmp_path, method):
    cfg = tiny_cfg(data=DOMAINS, federation={"scheme": "clustered", "clients_per_round": 4, "lr": 0.05},
                   clustering={"method": method, "num_clusters": 2})
    res = run_experiment(cfg, tmp_path / method)
    assert 0.5 <= res.rounds[-1]["cluster_purity"] <= 1.0
    assert set(res.adapters) == {"cluster_0", "cluster_1"}
    import sqlite3

    con = sqlite3.connect(tmp_path / method / "metrics.db")
    assigned = con.execute("SELECT COUNT(*) FROM client_metrics WHERE name='cluster' AND round=2").fetchone()[0]
    assert assigned == 4


def test_heterogeneous_ranks_with_exact_aggregation(tiny_cfg, tmp_path):
    cfg = tiny_cfg(peft={"r": 8, "client_ranks": [2, 8]}, aggregation={"lora": "exact"})
    res = run_experiment(cfg, tmp_path / "het")
    import sqlite3

    con = sqlite3.connect(tmp_path / "het" / "metrics.db")
    by_client = dict(con.execute("SELECT client_id, value FROM client_metrics WHERE round=1 AND name='bytes_up'"))
    full = 3584 * 4
    # rank-2 clients (even ids) send a quarter of the LoRA factors; rank-8 clients everything
    assert all(v == (full // 4 if cid % 2 == 0 else full) for cid, v in by_client.items())
    assert res.rounds[-1]["lora_exact_error"] < 1e-6 or res.rounds[-1]["lora_exact_error"] < res.rounds[-1]["lora_naive_error"]
    assert res.rounds[-1]["eval_loss"] < res.rounds[0]["eval_loss"]


def test_each_client_serves_with_its_cluster_adapter(tiny_cfg, tmp_path):
    """clients.json maps every client to its cluster's PEFT adapter, which loads with PeftModel and holds
    exactly that cluster's weights."""
    from peft import PeftModel

    from fedintel.models.loader import load_base_model
    from fedintel.tracking.checkpoint import latest_checkpoint
    from fedintel.tracking.export import adapter_for_client

    cfg = tiny_cfg(data=DOMAINS, federation={"scheme": "clustered", "clients_per_round": 4, "rounds": 1},
                   clustering={"method": "given", "num_clusters": 2}, eval={"per_client": False})
    run = run_experiment(cfg, tmp_path / "cfl")
    state = latest_checkpoint(run.run_dir)["state"]
    assert sorted(run.adapters) == ["cluster_0", "cluster_1"]
    for cid, k in enumerate(state["assignment"]):
        assert adapter_for_client(run.run_dir, cid) == run.adapters[f"cluster_{k}"]
    for k in sorted(set(state["assignment"])):  # each cluster's PEFT directory holds exactly its weights
        model = PeftModel.from_pretrained(load_base_model(cfg.model).model, str(run.adapters[f"cluster_{k}"]))
        loaded = dict(model.named_parameters())
        for key, t in state["clusters"][k].items():  # keyed by the PEFT model's own parameter names
            torch.testing.assert_close(loaded[key], t, rtol=0, atol=0)
    with pytest.raises(KeyError, match="client 99"):
        adapter_for_client(run.run_dir, 99)
