"""FedProx (Li et al. 2020): the proximal term on the adapter during local training."""

import torch

from fedintel.experiment import run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint
from fedintel.world import build_world


def _no_wall(rounds):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rounds]


def test_fedprox_with_mu_zero_equals_fedavg_bit_for_bit(tiny_cfg, tmp_path):
    plain = run_experiment(tiny_cfg(), tmp_path / "plain")
    prox = run_experiment(tiny_cfg(optimizer={"name": "fedprox", "mu": 0.0}), tmp_path / "prox")
    assert _no_wall(prox.rounds) == _no_wall(plain.rounds)
    a, b = (latest_checkpoint(tmp_path / n)["state"]["global"] for n in ("plain", "prox"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_large_mu_keeps_the_adapter_near_the_global_one(tiny_cfg, tmp_path):
    def moved(mu, name):
        cfg = tiny_cfg(optimizer={"name": "fedprox", "mu": mu}, federation={"rounds": 1, "local_steps": 4},
                       eval={"at_start": False, "per_client": False})
        run_experiment(cfg, tmp_path / name)
        init = build_world(cfg).initial_state
        g = latest_checkpoint(tmp_path / name)["state"]["global"]
        return float(sum((g[k] - init[k]).double().pow(2).sum() for k in g) ** 0.5)

    # AdamW normalises the step, so the pull shows once mu (w - w_global) rivals the loss gradient
    assert moved(1000.0, "strong") < 0.5 * moved(0.0, "none")
