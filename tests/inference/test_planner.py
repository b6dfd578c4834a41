"""The split planner: dynamic programming equals brute force; constraints are honoured."""

from __future__ import annotations

import math
import random

import pytest
from transformers import LlamaConfig

from fedintel.inference.planner import (
    DeviceSpec,
    LinkSpec,
    PlanError,
    SplitProblem,
    brute_force_split,
    chain_links,
    evaluate_plan,
    plan_split,
    problem_from_config,
)


def random_case(rng: random.Random):
    L, N = rng.randint(1, 7), rng.randint(1, 4)
    problem = SplitProblem(
        tuple(rng.uniform(1e9, 5e9) for _ in range(L)), tuple(rng.uniform(1e6, 5e6) for _ in range(L)),
        first_flops=rng.uniform(0, 1e9), first_bytes=rng.uniform(0, 3e6), last_flops=rng.uniform(0, 3e9),
        last_bytes=rng.uniform(0, 3e6), passes=rng.randint(1, 20), hop_bytes=rng.uniform(1e3, 1e6),
        source_hop_bytes=rng.uniform(1e2, 1e4),
    )
    devices = [DeviceSpec(f"d{i}", rng.uniform(1e9, 1e11), rng.choice([math.inf, rng.uniform(3e6, 2e7)]))
               for i in range(N)]
    links = {(a, b): LinkSpec(rng.uniform(1e6, 1e9), rng.uniform(0, 0.02))
             for a in range(N) for b in range(N) if a != b and rng.random() < 0.85}
    return problem, devices, links, rng.randrange(N)


def test_dp_equals_brute_force_on_random_small_cases():
    rng = random.Random(0)
    checked = infeasible = 0
    for _ in range(400):
        problem, devices, links, source = random_case(rng)
        try:
            bf = brute_force_split(problem, devices, links, source)
        except PlanError:
            with pytest.raises(PlanError):
                plan_split(problem, devices, links, source)
            infeasible += 1
            continue
        dp = plan_split(problem, devices, links, source)
        assert dp.latency_s == pytest.approx(bf.latency_s, rel=1e-12)
        again = evaluate_plan(problem, devices, links, dp.stages, source)
        assert again.latency_s == pytest.approx(dp.latency_s, rel=1e-12)
        # the plan is well formed: contiguous, non-empty, devices in order
        assert dp.stages[0][1] == 0 and dp.stages[-1][2] == problem.num_layers
        assert all(a[2] == b[1] and a[0] < b[0] for a, b in zip(dp.stages, dp.stages[1:], strict=False))
        checked += 1
    assert checked > 250 and infeasible > 5


def test_memory_forces_a_split_and_slow_links_prevent_one():
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    problem = problem_from_config(cfg, prompt_tokens=64, new_tokens=32)
    total = sum(problem.layer_bytes) + problem.first_bytes + problem.last_bytes
    phone = DeviceSpec("phone", 5e10, memory_bytes=0.6 * total)
    edge = DeviceSpec("edge", 5e11, memory_bytes=0.6 * total)
    fast = chain_links([LinkSpec(1e9, 1e-3)])
    plan = plan_split(problem, [phone, edge], fast)
    assert plan.devices == [0, 1] and 0 < plan.cuts[0] < 30
    # the faster device takes as many layers as its memory allows
    assert plan.stages[1][2] - plan.stages[1][1] >= plan.stages[0][2] - plan.stages[0][1]
    big_edge = DeviceSpec("edge", 5e11)
    assert plan_split(problem, [phone, big_edge], fast).devices == [1]  # offload everything
    slow = chain_links([LinkSpec(1e5, 0.2)])
    assert plan_split(problem, [DeviceSpec("phone", 5e10), big_edge], slow).devices == [0]  # stay local
    with pytest.raises(PlanError, match="no feasible split"):
        plan_split(problem, [phone], fast)


def test_bad_inputs_are_named():
    p = SplitProblem((1.0,), (1.0,))
    with pytest.raises(PlanError, match="no devices"):
        plan_split(p, [], {})
    with pytest.raises(PlanError, match="source device 3"):
        plan_split(p, [DeviceSpec("a", 1.0)], {}, source=3)
