"""The optimizer: section: names and knobs come from the registry; bad values and combinations are refused."""

from typing import Literal

import pytest
import torch
import yaml
from pydantic import Field

from fedintel.cli import main
from fedintel.config import ConfigError, dump_config, parse_config
from fedintel.experiment import run_experiment
from fedintel.optimizers import FederatedOptimizer, OptimizerConfig, register_optimizer, registered
from fedintel.tracking.checkpoint import latest_checkpoint


class SignStepConfig(OptimizerConfig):
    """A toy server optimizer defined only in this test: ``w <- w + lr * sign(delta)``."""

    name: Literal["signstep"] = "signstep"
    lr: float = Field(0.01, gt=0)


class SignStep(FederatedOptimizer):
    stateless = False

    def init_state(self, params):
        return {"steps": 0}

    def step(self, params, delta, state, updates=(), population=0):
        return {k: params[k] + self.config.lr * delta[k].sign() for k in params}, {"steps": state["steps"] + 1}


register_optimizer(name="signstep", config_cls=SignStepConfig, optimizer_cls=SignStep)


def test_builtins_are_registered_and_default_is_fedavg():
    assert {"fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedyogi", "fedadagrad"} <= set(registered())
    cfg = parse_config({})
    assert cfg.optimizer.name == "fedavg"
    again = parse_config(yaml.safe_load(dump_config(parse_config({"optimizer": {"name": "fedadam", "eta": 0.05}}))))
    assert again.optimizer.name == "fedadam" and again.optimizer.eta == 0.05 and again.optimizer.beta2 == 0.99


def test_a_toy_optimizer_registered_in_a_test_runs_from_a_config(tiny_cfg, tmp_path):
    cfg = tiny_cfg(optimizer={"name": "signstep", "lr": 0.003}, federation={"rounds": 2})
    assert isinstance(cfg.optimizer, SignStepConfig)
    run_experiment(cfg, tmp_path / "run")
    state = latest_checkpoint(tmp_path / "run")["state"]
    assert state["optimizer"] == {"steps": 2}
    from fedintel.world import build_world

    init = build_world(cfg).initial_state
    moved = torch.cat([(state["global"][k] - init[k]).abs().flatten() for k in init])
    steps = (moved / 0.003).round()
    assert torch.allclose(moved, steps * 0.003, atol=1e-6) and moved.max() > 0  # whole sign steps only


@pytest.mark.parametrize("optimizer, field", [
    ({"name": "fedprox", "mu": -0.1}, "optimizer.mu"),
    ({"name": "fedadam", "beta1": 1.0}, "optimizer.beta1"),
    ({"name": "fedadam", "beta2": -0.1}, "optimizer.beta2"),
    ({"name": "fedyogi", "beta2": 1.0}, "optimizer.beta2"),
    ({"name": "fedavgm", "momentum": 1.0}, "optimizer.momentum"),
    ({"name": "fedadagrad", "tau": 0.0}, "optimizer.tau"),
    ({"name": "fedadam", "tau": -1e-3}, "optimizer.tau"),
    ({"name": "fedadam", "eta": 0.0}, "optimizer.eta"),
    ({"name": "scaffold", "eta": -1.0}, "optimizer.eta"),
    ({"name": "fedavgm", "mu": 0.1}, "optimizer.mu"),  # a knob of another algorithm
    ({"name": "adamw"}, "optimizer.name"),
])
def test_bad_hyperparameters_name_the_field(optimizer, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({"optimizer": optimizer})


@pytest.mark.parametrize("sections, field", [
    ({"federation": {"scheme": "async"}, "network": {"enabled": True}}, "federation.scheme: async"),
    ({"federation": {"scheme": "hierarchical"}}, "federation.scheme: hierarchical"),
    ({"engine": "flower"}, "engine: flower"),
    ({"privacy": {"secure_aggregation": True}}, "privacy.secure_aggregation"),
    ({"privacy": {"dp": "central", "noise_multiplier": 1.0}}, "privacy.dp: central"),
    ({"aggregation": {"lora": "exact"}}, "aggregation.lora: exact"),
    ({"aggregation": {"rule": "median"}}, "aggregation.rule: median"),
    ({"peft": {"client_ranks": [4, 8]}}, "peft.client_ranks"),
])
def test_scaffold_refuses_schemes_and_wrappers_it_cannot_serve(sections, field):
    with pytest.raises(ConfigError, match=r"optimizer\.name: scaffold cannot serve " + field.replace(".", r"\.")):
        parse_config({"optimizer": {"name": "scaffold"}, **sections})


def test_scaffold_is_accepted_where_it_is_served():
    parse_config({"optimizer": {"name": "scaffold"}})
    parse_config({"optimizer": {"name": "scaffold"}, "federation": {"scheme": "clustered"}})


def test_server_optimizers_refuse_approximate_unlearning_records():
    with pytest.raises(ConfigError, match=r"optimizer\.name: fedadam with output\.save_client_updates"):
        parse_config({"optimizer": {"name": "fedadam"}, "output": {"save_client_updates": True}})
    parse_config({"optimizer": {"name": "fedprox"}, "output": {"save_client_updates": True}})


def test_fedintel_validate_refuses_a_bad_optimizer(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"optimizer": {"name": "fedyogi", "beta2": 1.5}}))
    assert main(["validate", str(bad)]) == 2
    assert "optimizer.beta2" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"optimizer": {"name": "fedyogi", "beta2": 0.9}}))
    assert main(["validate", str(good)]) == 0
