"""Server optimizers (Reddi et al. 2021): Flower's arithmetic, FedAvg equivalence, state per aggregation node."""

import numpy as np
import pytest
import torch

from fedintel.experiment import build_scheme, run_experiment
from fedintel.optimizers import build_optimizer, parse_optimizer_config
from fedintel.tracking.checkpoint import latest_checkpoint
from fedintel.world import build_world

STEPS = 4


def _flower_replies(targets):
    """Flower reply messages carrying ``targets`` (the aggregated arrays), one reply of weight 1."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # a Message needs an identity
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in targets.items()}),
                          "metrics": MetricRecord({"num-examples": 1})})
    return [Message(content, dst_node_id=1, message_type="train")]


def _flower_strategy(name, hp):
    from flwr.serverapp import strategy as fs

    if name == "fedavgm":
        return fs.FedAvgM(server_learning_rate=hp["eta"], server_momentum=hp["momentum"])
    cls = {"fedadam": fs.FedAdam, "fedyogi": fs.FedYogi, "fedadagrad": fs.FedAdagrad}[name]
    kw = {"eta": hp["eta"], "tau": hp["tau"]}
    if name != "fedadagrad":  # Flower's FedAdagrad fixes beta_1 at FedOpt's 0 (ours defaults to 0 too)
        kw.update(beta_1=hp["beta1"], beta_2=hp["beta2"])
    return cls(**kw)


@pytest.mark.parametrize("name, hp", [
    ("fedadam", {"eta": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-3}),
    ("fedyogi", {"eta": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-3}),
    ("fedadagrad", {"eta": 0.05, "tau": 1e-3}),
    ("fedavgm", {"eta": 0.7, "momentum": 0.9}),
])
def test_server_steps_equal_flowers_strategy_arithmetic(name, hp):
    """Drive Flower 1.41's own ``flwr.serverapp.strategy`` classes on plain float64 arrays, step by step.

    Flower's FedAdam bias-corrects with the exponent ``server_round + 1``; ours uses Kingma & Ba's step count
    ``t``, so round ``t`` of ours is fed to Flower as ``server_round = t - 1``.
    """
    from flwr.app import Array, ArrayRecord

    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(5, 3)), "b": rng.normal(size=7)}
    opt = build_optimizer(parse_optimizer_config({"name": name, **hp}))
    ours = {k: torch.from_numpy(v.copy()) for k, v in x.items()}
    state = opt.init_state(ours)
    flower = _flower_strategy(name, hp)
    theirs = {k: v.copy() for k, v in x.items()}
    for t in range(1, STEPS + 1):
        target = {k: theirs[k] + 0.1 * rng.normal(size=v.shape) for k, v in theirs.items()}
        if name == "fedavgm":
            flower.current_arrays = ArrayRecord({k: Array(v) for k, v in theirs.items()})
        else:
            flower.current_arrays = theirs  # what configure_train stores
        out, _ = flower.aggregate_train(t - 1 if name == "fedadam" else t, _flower_replies(target))
        delta = {k: torch.from_numpy(target[k] - theirs[k]) for k in theirs}  # the delta Flower sees
        ours, state = opt.step(ours, delta, state)
        theirs = {k: out[k].numpy() for k in theirs}
        for k in theirs:
            np.testing.assert_allclose(ours[k].numpy(), theirs[k], rtol=1e-12, atol=1e-14)
    assert not np.allclose(theirs["a"], x["a"])


def test_fedadam_without_bias_correction_is_reddi_algorithm_2():
    opt = build_optimizer(parse_optimizer_config({"name": "fedadam", "eta": 0.1, "beta1": 0.9, "beta2": 0.99,
                                                  "tau": 1e-3, "bias_correction": False}))
    w, d = {"w": torch.tensor([1.0], dtype=torch.float64)}, {"w": torch.tensor([0.5], dtype=torch.float64)}
    out, st = opt.step(w, d, opt.init_state(w))
    m, v = 0.1 * 0.5, 0.01 * 0.25
    assert out["w"].item() == pytest.approx(1.0 + 0.1 * m / (v**0.5 + 1e-3), rel=1e-14) and st["t"] == 1


def test_fedavgm_with_momentum_zero_and_lr_one_equals_fedavg_bit_for_bit(tiny_cfg, tmp_path):
    plain = run_experiment(tiny_cfg(), tmp_path / "plain")
    mom = run_experiment(tiny_cfg(optimizer={"name": "fedavgm", "momentum": 0.0, "eta": 1.0}), tmp_path / "mom")
    drop = {"wall_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in mom.rounds] == \
           [{k: v for k, v in r.items() if k not in drop} for r in plain.rounds]
    a, b = (latest_checkpoint(tmp_path / n)["state"]["global"] for n in ("plain", "mom"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fedadam_changes_the_run(tiny_cfg, tmp_path):
    plain = run_experiment(tiny_cfg(), tmp_path / "plain")
    adam = run_experiment(tiny_cfg(optimizer={"name": "fedadam", "eta": 1e-3}), tmp_path / "adam")
    assert adam.rounds[-1]["eval_loss"] != plain.rounds[-1]["eval_loss"]
    assert adam.rounds[-1]["eval_loss"] < adam.rounds[0]["eval_loss"]  # and it learns


DOMAINS = {"dataset": "chatterbot", "domains": ["tech_support", "trivia"], "partition": {"method": "by_domain"},
           "samples_per_client": 16, "global_eval_samples": 16}


def _one_round(cfg):
    scheme = build_scheme(cfg, build_world(cfg), reporter=None)
    state, _ = scheme.run_round(1, scheme.initial_state())
    return state


def test_clustered_keeps_one_optimizer_state_per_cluster(tiny_cfg):
    cfg = tiny_cfg(data=DOMAINS, federation={"scheme": "clustered", "clients_per_round": 4, "rounds": 1},
                   clustering={"method": "given", "num_clusters": 2}, eval={"per_client": False},
                   optimizer={"name": "fedadam"})
    state = _one_round(cfg)
    s0, s1 = state["optimizer"]
    assert s0["t"] == s1["t"] == 1
    assert not all(torch.equal(s0["m"][k], s1["m"][k]) for k in s0["m"])  # each cluster's own moments


def test_hierarchical_keeps_one_optimizer_state_per_edge_and_the_cloud(tiny_cfg):
    cfg = tiny_cfg(federation={"scheme": "hierarchical", "clients_per_round": 4, "rounds": 1},
                   hierarchy={"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 1}, eval={"per_client": False},
                   optimizer={"name": "fedavgm", "momentum": 0.5})
    state = _one_round(cfg)
    e0, e1 = state["optimizer"]["edges"]
    assert not all(torch.equal(e0["v"][k], e1["v"][k]) for k in e0["v"])
    cloud = state["optimizer"]["cloud"]["v"]
    # the cloud's first momentum is the change of the global adapter, which it then applies with eta = 1
    init = build_world(cfg).initial_state
    for k in init:
        torch.testing.assert_close(cloud[k], state["global"][k] - init[k], rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode, steps", [("fedasync", 6), ("fedbuff", 2)])
def test_async_updates_the_state_per_arrival_or_per_buffer(tiny_cfg, mode, steps):
    cfg = tiny_cfg(federation={"scheme": "async", "clients_per_round": 3, "rounds": 2}, network={"enabled": True},
                   eval={"per_client": False}, optimizer={"name": "fedyogi"},
                   **{"async": {"mode": mode, "buffer_size": 3, "arrivals_per_round": 3}})
    scheme = build_scheme(cfg, build_world(cfg), reporter=None)
    state = scheme.initial_state()
    for r in (1, 2):
        state, _ = scheme.run_round(r, state)
    assert state["optimizer"]["t"] == state["version"] == steps
