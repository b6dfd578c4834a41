"""``fedintel infer experts --from-run``: a clustered run's adapters served as experts, routed by centroids
built from the clients' own statistics, beat the FedAvg adapter on every domain's held-out queries."""

from __future__ import annotations

import shutil

import pytest
import torch

from fedintel.cli import main as cli_main
from fedintel.config import load_config
from fedintel.data.federated import plan_partition
from fedintel.experiment import run_experiment
from fedintel.inference.config import InferConfig
from fedintel.inference.embedding import Encoder
from fedintel.inference.experts import EmbeddingRouter, EmbeddingStats
from fedintel.inference.modes.experts import run as run_experts
from fedintel.inference.run_experts import RunExpertsError, load_run_experts, resolve_baseline
from tests.conftest import tiny_config

# Two clearly different domains (King James Bible, FOLDOC/Jargon definitions), one client each: a real
# pretrained model cut to 2 layers learns them in two rounds.
GEN2 = {
    "model": {"name": "smollm2-135m", "num_layers": 2},
    "data": {"dataset": "generation4", "domains": ["bible", "technical"], "max_length": 32, "samples_per_client": 40,
             "global_eval_samples": 16, "partition": {"method": "by_domain"}},
    "federation": {"rounds": 2, "num_clients": 2, "clients_per_round": 2, "local_steps": 4, "batch_size": 8,
                   "micro_batch_size": 8, "lr": 3e-3, "seed": 0},
    "eval": {"max_samples": 4},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    fl = run_experiment(tiny_config(tmp, name="gen2-fl", **GEN2))
    cfl = run_experiment(tiny_config(tmp, name="gen2-cfl", **{**GEN2, "federation": {
        **GEN2["federation"], "scheme": "clustered"}}, clustering={"method": "given", "num_clusters": 2}))
    return fl.run_dir, cfl.run_dir


@pytest.fixture(scope="module")
def encoder():
    return Encoder("minilm-l6")


def test_client_statistics_sum_to_the_pooled_centroid(encoder):
    texts = ["The Lord is my shepherd.", "A computer is a machine.", "Hello, how are you?", "Fortune favours the bold."]
    split = EmbeddingStats.of(encoder, texts[:1]) + EmbeddingStats.of(encoder, texts[1:])
    pooled = EmbeddingRouter(encoder, {"all": texts}).centroids[0]
    assert split.count == 4
    assert torch.allclose(split.centroid(), pooled, atol=1e-6)
    router = EmbeddingRouter.from_statistics(encoder, {"a": split, "b": EmbeddingStats.of(encoder, texts[:1])})
    assert router.names == ["a", "b"] and torch.allclose(router.centroids[0], pooled, atol=1e-6)
    with pytest.raises(ValueError, match="at least one text"):
        EmbeddingStats.of(encoder, [])


def test_routed_cluster_experts_beat_the_global_adapter(runs, encoder):
    fl_dir, cfl_dir = runs
    rx = load_run_experts(cfl_dir, encoder)
    assert list(rx.experts) == ["cluster_0", "cluster_1"]
    assert rx.global_adapter is None  # a clustered run has no global model: the FedAvg run supplies it
    # one client per domain, so each domain has its own expert, and the statistics cover every training row
    assert sorted(rx.domain_expert.values()) == sorted(rx.experts)
    data = load_config(cfl_dir / "config.yaml").data
    part = plan_partition(data, "causal_lm", 2, 0)
    assert sum(s.count for s in rx.stats.values()) == sum(len(t) for t in part.client_train)
    assert {q.domain for q in rx.queries} == set(rx.domain_expert) and len(rx.queries) == 16
    assert not set(part.held) & {i for t in part.client_train for i in t}  # the queries are held out
    assert [q.route_text for q in rx.queries] == [part.text(i, data) for i in part.held]

    report = run_experts(InferConfig(from_run=str(cfl_dir), baseline=str(fl_dir), insecure=True,
                                     prompt="In the beginning God created the heaven. What is a compiler?",
                                     max_new_tokens=4))
    o = report.overall
    assert report.routing_accuracy >= 0.75, report.domains
    assert o.loss_global is not None and o.loss_routed < o.loss_global, report.domains
    assert o.loss_own < o.loss_global and o.loss_global < o.loss_base, report.domains
    assert all(r.loss_routed < r.loss_global for r in report.domains[:-1]), report.domains
    assert [e for _, e, _ in report.answer.parts] and {e for _, e, _ in report.answer.parts} <= set(rx.experts)
    text = "\n".join(x if isinstance(x, str) else x.title for x in report.render())
    assert "routing accuracy" in text and "vs global" in text


def test_hierarchical_run_serves_its_edge_adapters_and_its_global(tmp_path, encoder):
    cfg = tiny_config(tmp_path, data={"dataset": "generation4", "partition": {"method": "by_domain"}},
                      federation={"scheme": "hierarchical", "rounds": 2, "num_clients": 4, "clients_per_round": 4},
                      hierarchy={"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2})
    run_dir = run_experiment(cfg).run_dir
    rx = load_run_experts(run_dir, encoder)
    assert set(rx.experts) <= {"edge_0", "edge_1"} and len(rx.experts) == 2
    assert rx.global_adapter == run_dir / "adapters" / "global"
    assert resolve_baseline(run_dir, rx) == rx.global_adapter


def test_runs_that_cannot_serve_experts_are_refused(runs, encoder, tmp_path, capsys):
    fl_dir, cfl_dir = runs
    with pytest.raises(RunExpertsError, match="clustered run"):
        load_run_experts(fl_dir, encoder)  # one global adapter only
    with pytest.raises(RunExpertsError, match="not a fedintel run directory"):
        load_run_experts(tmp_path, encoder)
    other = tmp_path / "other-fl"
    shutil.copytree(fl_dir, other)
    cfg_path = other / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("num_layers: 2", "num_layers: 3"))
    rx = load_run_experts(cfl_dir, encoder)
    with pytest.raises(RunExpertsError, match="num_layers=3"):
        resolve_baseline(other, rx)
    with pytest.raises(RunExpertsError, match="neither a run directory"):
        resolve_baseline(tmp_path, rx)
    with pytest.raises(ValueError, match="baseline: .* set from_run"):
        InferConfig(baseline=str(fl_dir))
    with pytest.raises(ValueError, match="domains: a run's experts"):
        InferConfig(from_run=str(cfl_dir), domains=["coding"])
    with pytest.raises(ValueError, match="num_layers: 3, but the run's adapters were trained with num_layers=2"):
        run_experts(InferConfig(from_run=str(cfl_dir), num_layers=3, insecure=True))
    # the command line: a clear error and exit status 2, before any device process starts
    assert cli_main(["infer", "experts", "--from-run", str(fl_dir)]) == 2
    assert "clustered run" in capsys.readouterr().out


def test_routing_statistics_are_kept_in_the_run_and_recomputed_when_unusable(runs, encoder):
    from fedintel.inference.run_experts import STATS_DIR, expert_statistics, open_expert_run

    _, cfl_dir = runs

    def run_routing_statistics(run_dir, encoder):
        return expert_statistics(open_expert_run(run_dir), encoder)

    first = run_routing_statistics(cfl_dir, encoder)
    kept = list((cfl_dir / STATS_DIR).glob("*.safetensors"))
    assert len(kept) == 1
    again = run_routing_statistics(cfl_dir, encoder)
    assert list(again) == list(first) == ["cluster_0", "cluster_1"]
    assert all(torch.equal(again[n].total, first[n].total) and again[n].count == first[n].count for n in first)
    kept[0].write_bytes(b"not a safetensors file")  # a torn or foreign file is not trusted
    redone = run_routing_statistics(cfl_dir, encoder)
    assert all(torch.allclose(redone[n].total, first[n].total, rtol=1e-4, atol=1e-4) for n in first), [
        float((redone[n].total - first[n].total).abs().max()) for n in first]
    assert kept[0].read_bytes()[:8] != b"not a sa"  # and is written again whole


def test_serve_routes_auto_by_the_clients_statistics(runs):
    """``fedintel serve --from-run`` of a clustered run: ``auto`` goes to the expert of each held-out query's
    domain by its clients' centroids, through the OpenAI API."""
    import httpx

    from fedintel.serving.config import ServeConfig, ServeConfigError
    from fedintel.serving.server import serve_in_thread
    from fedintel.serving.service import Service

    fl_dir, cfl_dir = runs
    rx = load_run_experts(cfl_dir, Encoder("minilm-l6"))
    serve = {"model": {"name": "smollm2-135m", "num_layers": 2}, "paths": [], "insecure": True,
             "limits": {"max_tokens": 4, "default_max_tokens": 1}, "restart_dead": False}
    running = serve_in_thread(ServeConfig.model_validate({**serve, "from_run": str(cfl_dir)}))
    try:
        auto = [m["fedintel"] for m in httpx.get(running.url + "/v1/models").json()["data"] if m["id"] == "auto"]
        assert auto == [{"kind": "router", "routing": "clients", "routes_to": ["cluster_0", "cluster_1"], "paths": []}]
        served = []
        for q in rx.queries:
            r = httpx.post(running.url + "/v1/completions", json={"model": "auto", "prompt": q.route_text},
                           timeout=120)
            assert r.status_code == 200, r.text
            served.append(r.json()["fedintel"]["served_by"])
        right = sum(s == rx.domain_expert[q.domain] for s, q in zip(served, rx.queries, strict=True))
        assert right >= 0.75 * len(rx.queries), served
    finally:
        running.stop()
    # a FedAvg run has no experts: auto falls back to loss routing, and asking for clients is refused by name
    with pytest.raises(ServeConfigError, match="routing.method: clients cannot route .* clustered run"):
        Service(ServeConfig.model_validate({**serve, "from_run": str(fl_dir), "routing": {"method": "clients"}}))
