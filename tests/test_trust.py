"""The run's trust set-up, declared once: which client mods and aggregator wrappers each setting adds."""

import dataclasses

import torch

from fedintel.aggregation.factory import build_aggregator
from fedintel.attacks.config import malicious_clients
from fedintel.data.tokenize import TokenizedSet
from fedintel.privacy.dp import DPAggregator, privatize_local, round_generator
from fedintel.privacy.secure_aggregator import SecureAggregator
from fedintel.training.mods import NO_MODS
from fedintel.trust import build_client_mods, wrap_aggregator
from fedintel.types import TrainJob, Update


def test_an_honest_run_has_no_mods_and_its_own_rule(tiny_cfg):
    cfg = tiny_cfg()
    rule = build_aggregator(cfg)
    assert build_client_mods(cfg) == NO_MODS
    assert wrap_aggregator(cfg, rule) is rule
    assert isinstance(wrap_aggregator(tiny_cfg(privacy={"dp": "central", "noise_multiplier": 1.0}), rule), DPAggregator)
    assert isinstance(wrap_aggregator(tiny_cfg(privacy={"secure_aggregation": True}), rule), SecureAggregator)


def test_label_flip_is_a_data_mod_of_the_malicious_clients_only(tiny_cfg):
    cfg = tiny_cfg(model={"name": "tiny-bert", "task": "classification", "num_labels": 2},
                   attack={"kind": "label_flip", "fraction": 0.25})
    mods = build_client_mods(cfg)
    assert mods.update == () and len(mods.data) == 1
    (bad,) = malicious_clients(4, 0.25, 0)
    shard = TokenizedSet([[1, 2], [3, 4], [5, 6]], [0, 1, 1])
    assert mods.train_data(bad, shard).labels == [1, 0, 0]
    assert shard.labels == [0, 1, 1]  # the client's shard itself is untouched
    honest = next(c for c in range(4) if c != bad)
    assert mods.train_data(honest, shard) is shard


def test_an_attacker_under_local_dp_attacks_first_then_noises(tiny_cfg):
    cfg = tiny_cfg(privacy={"dp": "local", "noise_multiplier": 0.5, "clip_norm": 1.0},
                   attack={"kind": "sign_flip", "fraction": 0.25})
    mods = build_client_mods(cfg)
    (bad,) = malicious_clients(4, 0.25, 0)
    delta = {"a": torch.tensor([0.3, -0.4])}
    job = TrainJob(bad, {"a": torch.zeros(2)}, 0, 2)
    sent = mods.finish(Update(bad, dict(delta), 4, 0, 1.0, 1, 1), job)
    expected = privatize_local({"a": -delta["a"]}, 1.0, 0.5, round_generator(0, 2, f"local{bad}"))
    assert torch.equal(sent.delta["a"], expected["a"]) and sent.metrics["malicious"] == 1.0
    honest = dataclasses.replace(sent, client_id=(bad + 1) % 4, delta=dict(delta), metrics={})
    assert "malicious" not in mods.finish(honest, dataclasses.replace(job, client_id=honest.client_id)).metrics
