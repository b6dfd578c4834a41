"""Multi-access with failover: a serving process is killed mid-batch and every request is still answered."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.multiaccess import (
    AccessPath,
    AllPathsFailed,
    FaultyLink,
    MultiAccessClient,
    rank_paths,
    simulate_multiaccess,
)
from fedintel.inference.stage import LocalLM, greedy_generate

PROMPTS = [f"Request number {i}: tell me about item {i * 7}." for i in range(16)]
MAX_NEW = 6


@pytest.fixture(scope="module")
def servers(model_dirs, links):
    group = WorkerGroup(links)
    args = ["--model", str(model_dirs["large"]), "--delay", "0.03"]
    workers = group.start([("edge", args), ("neighbour", args), ("rsu", args)])
    yield group, workers
    group.close()


@pytest.fixture(scope="module")
def expected(model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["large"]).eval()
    tok = AutoTokenizer.from_pretrained(model_dirs["large"])
    lm = LocalLM(model)
    return [greedy_generate(lm, tok(p)["input_ids"], MAX_NEW, tok.eos_token_id).tokens for p in PROMPTS]


def paths_for(workers, addresses=None):
    addresses = addresses or [w.address for w in workers]
    return [
        AccessPath("cellular-edge", addresses[0], "cellular", rate_bps=200e6, latency_s=0.005, availability=0.99,
                   cost_per_mb=0.5),
        AccessPath("d2d-neighbour", addresses[1], "d2d", rate_bps=50e6, latency_s=0.002, availability=0.9),
        AccessPath("rsu", addresses[2], "rsu", rate_bps=20e6, latency_s=0.02, availability=0.95, cost_per_mb=0.1),
    ]


def request_for(i):
    return "generate", {"prompt": PROMPTS[i], "max_new_tokens": MAX_NEW}, {}


def test_policies_rank_paths():
    ps = [AccessPath("a", "127.0.0.1:1", rate_bps=1e6, latency_s=0.05, availability=1.0, cost_per_mb=0.0),
          AccessPath("b", "127.0.0.1:2", rate_bps=1e9, latency_s=0.001, availability=0.5, cost_per_mb=2.0),
          AccessPath("c", "127.0.0.1:3", rate_bps=1e8, latency_s=0.01, availability=0.99, cost_per_mb=1.0)]
    assert rank_paths(ps, "cheapest", 1e4) == [0, 2, 1]
    assert rank_paths(ps, "most_available", 1e4) == [0, 2, 1]
    assert rank_paths(ps, "fastest", 1e4)[0] == 1
    assert rank_paths(ps, "round_robin", 1e4, counter=1) == [1, 2, 0]
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        rank_paths(ps, "best", 1e4)
    sim = simulate_multiaccess(ps, "fastest", 2000, 1e4, seed=1)
    assert sim.success_rate > 0.99 and 0 < sim.mean_s < sim.p95_s + 1e-9
    only_bad = [AccessPath("x", "127.0.0.1:1", availability=0.0)]
    assert simulate_multiaccess(only_bad, "fastest", 10, 1e3).success_rate == 0.0


def test_killing_the_serving_process_mid_batch_loses_no_request(servers, expected, links):
    group, workers = servers
    paths = paths_for(workers)
    client = MultiAccessClient(paths, links, policy="fastest", timeout=5.0, cooldown_s=30.0)
    first = rank_paths(paths, "fastest", client.request_bytes)[0]
    victim, victim_path = workers[first], paths[first].name  # the node the policy prefers

    def kill_when_busy():
        deadline = time.monotonic() + 20
        probe = group.client(victim, timeout=2.0)
        while time.monotonic() < deadline:
            try:
                if probe.request("ping").meta["forwards"] >= 3 * MAX_NEW:  # 3 answered, more in flight
                    break
            except Exception:
                break
            time.sleep(0.01)
        probe.close()
        group.kill(victim)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    t0 = time.monotonic()
    answers = client.map(request_for, len(PROMPTS), concurrency=4)
    killer.join()
    client.close()
    assert time.monotonic() - t0 < 60
    assert not victim.alive()
    failed = [a for a in answers if isinstance(a, AllPathsFailed)]
    assert failed == []
    for i, a in enumerate(answers):
        assert a.index == i
        assert a.reply.tensors["tokens"].tolist() == expected[i], f"request {i} via {a.path}"
    served = {a.path for a in answers}
    assert victim_path in served and served - {victim_path}  # before and after the kill
    assert any(a.retried and a.attempts[0].path == victim_path for a in answers)  # in-flight ones moved


def test_flaky_links_are_retried(servers, expected):
    group, workers = servers
    alive = [w for w in workers if w.alive()]
    assert len(alive) == 2
    links = [FaultyLink(alive[0].address, latency_s=0.001, drop_prob=0.4, seed=3),
             FaultyLink(alive[1].address, latency_s=0.002, drop_prob=0.4, seed=4)]
    try:
        paths = [AccessPath("d2d", links[0].address, availability=0.6),
                 AccessPath("rsu", links[1].address, availability=0.6)]
        client = MultiAccessClient(paths, group.security, policy="round_robin", timeout=5.0, cooldown_s=0.0, max_rounds=6)
        answers = client.map(request_for, 8, concurrency=2)
        client.close()
    finally:
        for link in links:
            link.close()
    assert sum(link.drops for link in links) > 0
    assert all(not isinstance(a, AllPathsFailed) for a in answers)
    assert [a.reply.tensors["tokens"].tolist() for a in answers] == expected[:8]


def test_every_path_down_is_a_clear_bounded_failure(servers, links):
    paths = [AccessPath("gone", "127.0.0.1:1"), AccessPath("also-gone", "127.0.0.1:2")]
    client = MultiAccessClient(paths, links, timeout=1.0, connect_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(AllPathsFailed, match="failed on every path .*gone: cannot connect"):
        client.request("ping")
    assert time.monotonic() - t0 < 10
    bad = MultiAccessClient(paths_for(servers[1]), links)
    with pytest.raises(Exception, match="context"):
        bad.request("generate", {"prompt": "word " * 200, "max_new_tokens": 8})
    bad.close()
    assert torch.get_num_threads() >= 1
