"""SCAFFOLD (Karimireddy et al. 2020): control variates correct client drift; state, bytes and clusters."""

import sqlite3

import pytest
import torch

from fedintel.aggregation.fedavg import weighted_mean
from fedintel.experiment import build_scheme, run_experiment
from fedintel.optimizers import build_optimizer, parse_optimizer_config
from fedintel.tracking.checkpoint import latest_checkpoint
from fedintel.types import Update
from fedintel.world import build_world

# Two clients with conflicting quadratic objectives f_i(w) = 1/2 (w - o_i)^T A_i (w - o_i).
CURV = [torch.tensor([1.0, 10.0, 3.0], dtype=torch.float64), torch.tensor([10.0, 1.0, 0.5], dtype=torch.float64)]
OPT = [torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)]
GLOBAL_OPT = sum(a * o for a, o in zip(CURV, OPT, strict=True)) / sum(CURV)  # argmin of the sum


def _run_quadratic(name: str, rounds: int = 300, local_steps: int = 10, lr: float = 0.05) -> torch.Tensor:
    """Full participation, plain local SGD; the optimizer's own client term, upload and server step."""
    opt = build_optimizer(parse_optimizer_config({"name": name}))
    w = {"w": torch.zeros(3, dtype=torch.float64)}
    state = opt.init_state(w)
    for _ in range(rounds):
        updates = []
        for i, (a, o) in enumerate(zip(CURV, OPT, strict=True)):
            extras = opt.downlink(state, i)
            term = opt.local_term(w, extras, lr)
            y = {"w": w["w"].clone()}
            for _ in range(local_steps):
                y["w"] -= lr * a * (y["w"] - o)  # an SGD step on the exact gradient
                if term is not None:
                    term.after_step(y)
            u = Update(i, {"w": y["w"] - w["w"]}, num_samples=1, base_version=0, train_loss=0.0, steps=local_steps,
                       tokens=0)
            updates.append(opt.finish_update(u, w, extras, lr))
        delta = weighted_mean([u.delta for u in updates], [1.0, 1.0])
        w, state = opt.step(w, delta, state, updates, population=len(updates))
    return w["w"]


def test_scaffold_converges_to_the_global_optimum_where_fedavg_drifts():
    fedavg = _run_quadratic("fedavg")
    scaffold = _run_quadratic("scaffold")
    assert float((fedavg - GLOBAL_OPT).norm()) > 0.1  # FedAvg settles at a biased point (client drift)
    assert float((scaffold - GLOBAL_OPT).norm()) < 1e-8


def _no_wall(rounds):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rounds]


def test_scaffold_run_keeps_control_variates_and_counts_their_bytes(tiny_cfg, tmp_path):
    plain = run_experiment(tiny_cfg(), tmp_path / "plain")
    cfg = tiny_cfg(optimizer={"name": "scaffold"})
    res = run_experiment(cfg, tmp_path / "scaffold")
    assert res.rounds[-1]["eval_loss"] < res.rounds[0]["eval_loss"]
    state = latest_checkpoint(tmp_path / "scaffold")["state"]["optimizer"]
    n = cfg.federation.num_clients
    assert state["ci"]  # the clients that took part hold a control variate
    for k, c in state["c"].items():  # c = (1/N) sum_i c_i, clients that never trained hold zero
        assert float(c.abs().max()) > 0
        torch.testing.assert_close(c, sum(ci[k] for ci in state["ci"].values()) / n, rtol=1e-5, atol=1e-6)
    adapter = 3584 * 4  # tiny-llama LoRA r=8 on q,v, fp32
    con = sqlite3.connect(tmp_path / "scaffold" / "metrics.db")
    up = {v for (v,) in con.execute("SELECT value FROM client_metrics WHERE name='bytes_up'")}
    down = {v for (v,) in con.execute("SELECT value FROM client_metrics WHERE name='bytes_down'")}
    assert up == {2 * adapter} and down == {2 * adapter}  # delta + dc_i up, adapter + c down
    assert res.rounds[-1]["cum_bytes_up"] == 2 * plain.rounds[-1]["cum_bytes_up"]
    assert res.rounds[-1]["cum_bytes_down"] == 2 * plain.rounds[-1]["cum_bytes_down"]
    assert res.rounds[-1]["sim_time_s"] > plain.rounds[-1]["sim_time_s"]  # the network clock pays for them


def test_scaffold_with_eta_one_moves_the_model_like_fedavg_in_round_one(tiny_cfg, tmp_path):
    # c = c_i = 0 in round 1: the clients train exactly as FedAvg's do
    plain = run_experiment(tiny_cfg(federation={"rounds": 1}), tmp_path / "plain")
    scaf = run_experiment(tiny_cfg(federation={"rounds": 1}, optimizer={"name": "scaffold"}), tmp_path / "scaf")
    assert scaf.rounds[1]["eval_loss"] == plain.rounds[1]["eval_loss"]


def test_clustered_scaffold_keeps_control_variates_per_cluster(tiny_cfg):
    domains = {"dataset": "chatterbot", "domains": ["tech_support", "trivia"], "partition": {"method": "by_domain"},
               "samples_per_client": 16, "global_eval_samples": 16}
    cfg = tiny_cfg(data=domains, federation={"scheme": "clustered", "clients_per_round": 4, "rounds": 1},
                   clustering={"method": "given", "num_clusters": 2}, eval={"per_client": False},
                   optimizer={"name": "scaffold"})
    scheme = build_scheme(cfg, build_world(cfg), reporter=None)
    state, _ = scheme.run_round(1, scheme.initial_state())
    s0, s1 = state["optimizer"]
    assert set(s0["ci"]) == {0, 2} and set(s1["ci"]) == {1, 3}  # each client's c_i in its cluster's state
    assert not all(torch.equal(s0["c"][k], s1["c"][k]) for k in s0["c"])
    for s in (s0, s1):  # c of a cluster is the mean over its members
        for k in s["c"]:
            torch.testing.assert_close(s["c"][k], sum(ci[k] for ci in s["ci"].values()) / 2, rtol=1e-5, atol=1e-6)


def test_a_dc_with_nan_is_rejected_not_averaged(tiny_cfg):
    from fedintel.aggregation.validate import UpdateRejected, validate_update

    ref = {"w": torch.zeros(2)}
    u = Update(0, {"w": torch.zeros(2)}, 1, 0, 0.0, 1, 0, extras={"scaffold_dc": {"w": torch.tensor([0.0, float("nan")])}})
    with pytest.raises(UpdateRejected, match="scaffold_dc holds NaN"):
        validate_update(u, ref)
