"""Batched multi-client LoRA training equals training the clients one by one (issue #15)."""

import pytest
import torch

from fedintel.data.tokenize import TokenizedSet
from fedintel.training.batched import BatchJob, batching_problem, train_batched
from fedintel.training.client import TrainingDiverged, train_local
from fedintel.types import Update
from fedintel.world import build_world


def rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest relative max error over the tensors (|a - b|_max / |b|_max)."""
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in b)


def head(data: TokenizedSet, n: int) -> TokenizedSet:
    return TokenizedSet(data.input_ids[:n], None, None)


def sequential(world, jobs, spec):
    return [train_local(world.slot, j.start, j.data, spec, client_id=j.client_id, base_version=j.base_version,
                        seed=j.seed, pad_id=world.pad_id, task="causal_lm", shape=world.shape) for j in jobs]


def three_jobs(world, lengths=(16, 9, 3)):
    """Shards of 16, 9 and 3 examples: with one local epoch, 4, 3 and 1 steps; the 3-example client's batch
    is 3 rows (micro-batches of 2 and 1), so the combined micro-batches have unequal segments."""
    data = world.data.clients
    return [BatchJob(c, world.initial_state, head(data[c].train, n), seed=11 + c, base_version=0)
            for c, n in enumerate(lengths)]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_batched_equals_sequential_exactly_in_float64(tiny_cfg, dropout, grouped):
    # Text of uneven lengths: the combined micro-batch pads every row to the longest, which in float32 only
    # changes rounding (see the next test); in float64 that rounding vanishes and the two must agree.
    # With dropout > 0 each client draws the sequential loop's own masks on the CPU.
    world = build_world(tiny_cfg(peft={"dropout": dropout}, federation={"local_epochs": 1.0}))
    world.peft_model.double()
    spec, jobs = world.local_spec(), three_jobs(world)
    seq = sequential(world, jobs, spec)
    bat = train_batched(world.slot, jobs, spec, pad_id=world.pad_id, shape=world.shape, grouped=grouped)
    assert [u.steps for u in seq] == [4, 3, 1]
    for s, b in zip(seq, bat, strict=True):
        assert isinstance(b, Update)
        assert rel_err(b.delta, s.delta) <= 1e-5
        assert (b.client_id, b.steps, b.tokens, b.flops, b.num_samples) == (s.client_id, s.steps, s.tokens, s.flops,
                                                                             s.num_samples)
        assert b.train_loss == pytest.approx(s.train_loss, rel=1e-5)
    assert min(float(t.abs().max()) for t in seq[0].delta.values()) > 0  # both A and B moved


@pytest.mark.parametrize("grouped", [False, True])
def test_batched_equals_sequential_in_float32(tiny_cfg, grouped):
    # max_length 8: every chatterbot example fills it, so each client's rows carry no extra padding and float32
    # results agree to rounding (the per-client matmuls, the CPU default, are the sequential loop's kernels).
    # With uneven lengths, extra padding changes the attention's float32 rounding (~4e-7 in a gradient), which
    # AdamW's per-element normalisation amplifies in the near-zero gradients of this random tiny model to
    # ~4e-3: the sequential loop itself moves that much when only its padding changes. The grouped path
    # (batched matmuls, the accelerator default) rounds differently from the sequential matmuls, which the
    # same amplification turns into up to ~1e-3 here (its float64 test above is exact).
    world = build_world(tiny_cfg(data={"max_length": 8}, peft={"dropout": 0.0}, federation={"local_epochs": 1.0}))
    spec, jobs = world.local_spec(), three_jobs(world)
    seq = sequential(world, jobs, spec)
    bat = train_batched(world.slot, jobs, spec, pad_id=world.pad_id, shape=world.shape, grouped=grouped)
    for s, b in zip(seq, bat, strict=True):
        assert rel_err(b.delta, s.delta) <= (1e-2 if grouped else 1e-5)
        assert (b.steps, b.tokens, b.flops) == (s.steps, s.tokens, s.flops)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_diverging_client_fails_alone(tiny_cfg, grouped):
    world = build_world(tiny_cfg(data={"max_length": 8}, peft={"dropout": 0.0}))
    spec = world.local_spec()
    bad = {k: v.clone() for k, v in world.initial_state.items()}
    for k in bad:
        if "lora_B" in k:
            bad[k].fill_(float("nan"))
    data = world.data.clients
    jobs = [BatchJob(0, world.initial_state, data[0].train, 1, 0), BatchJob(1, bad, data[1].train, 2, 0),
            BatchJob(2, world.initial_state, data[2].train, 3, 0)]
    out = train_batched(world.slot, jobs, spec, pad_id=world.pad_id, shape=world.shape, grouped=grouped)
    assert isinstance(out[1], TrainingDiverged) and "client 1" in str(out[1])
    seq = sequential(world, [jobs[0], jobs[2]], spec)
    tol = 1e-2 if grouped else 1e-5  # see test_batched_equals_sequential_in_float32
    assert rel_err(out[0].delta, seq[0].delta) <= tol and rel_err(out[2].delta, seq[1].delta) <= tol


def test_what_cannot_be_batched_says_why(tiny_cfg):
    world = build_world(tiny_cfg(peft={"method": "prefix"}))
    assert "LoRA" in batching_problem(world.slot, "causal_lm")
    lora = build_world(tiny_cfg(peft={"dropout": 0.1}))
    assert batching_problem(lora.slot, "classification").startswith("model.task classification")
    assert "gradient_checkpointing" in batching_problem(lora.slot, "causal_lm", gradient_checkpointing=True)
    assert batching_problem(lora.slot, "causal_lm") is None
