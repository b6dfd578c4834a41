"""Every supported combination of aggregation and privacy settings does what it says."""

import dataclasses

import torch

from fedintel.aggregation.factory import build_aggregator
from fedintel.aggregation.lora_exact import ExactLoRA
from fedintel.aggregation.validate import update_norm
from fedintel.privacy.dp import DPAggregator
from fedintel.privacy.secure_aggregator import SecureAggregator
from fedintel.trust import build_client_mods, wrap_aggregator
from fedintel.types import TrainJob, Update


def _updates(scale: float = 10.0) -> tuple[list[Update], dict]:
    gen = torch.Generator().manual_seed(0)
    ref = {"l.lora_A.weight": torch.zeros(2, 6), "l.lora_B.weight": torch.zeros(6, 2)}
    ups = [Update(c, {k: scale * torch.randn(v.shape, generator=gen) for k, v in ref.items()}, 4, 0, 1.0, 1, 1)
           for c in range(3)]
    return ups, ref


def _agg(tiny_cfg, **sections):
    cfg = tiny_cfg(**sections)
    return cfg, wrap_aggregator(cfg, build_aggregator(cfg))


def test_secure_aggregation_with_central_dp_clips_and_noises(tiny_cfg):
    ups, ref = _updates()
    priv = {"secure_aggregation": True, "dp": "central", "clip_norm": 0.5}
    _, exact = _agg(tiny_cfg, privacy={**priv, "noise_multiplier": 0.0})
    _, noisy = _agg(tiny_cfg, privacy={**priv, "noise_multiplier": 1.0})
    assert isinstance(exact, SecureAggregator)
    out = exact.aggregate(ups, ref)
    # clipped to 0.5 each, equal weights over clients_per_round (3): the mean's norm is at most 0.5
    assert update_norm(out) <= 0.5 + 1e-6
    plain = DPAggregator(0.5, 0.0, 3).aggregate(ups, ref)
    assert all(torch.allclose(out[k], plain[k], atol=1e-6) for k in ref)
    assert not all(torch.allclose(noisy.aggregate(ups, ref)[k], out[k], atol=1e-3) for k in ref)


def test_local_dp_with_exact_lora_noises_each_update_and_aggregates_exactly(tiny_cfg):
    cfg, agg = _agg(tiny_cfg, privacy={"dp": "local", "noise_multiplier": 1.0, "clip_norm": 0.5},
                    aggregation={"lora": "exact"})
    assert isinstance(agg, ExactLoRA)
    ups, ref = _updates()
    mods = build_client_mods(cfg)
    sent = [mods.finish(dataclasses.replace(u, delta=dict(u.delta)), TrainJob(u.client_id, ref, 0, 1)) for u in ups]
    for u, s in zip(ups, sent, strict=True):
        assert not torch.allclose(s.delta["l.lora_A.weight"], u.delta["l.lora_A.weight"])
    assert set(agg.aggregate(sent, ref)) == set(ref)


def test_central_dp_unweighted_is_dp_fedavg(tiny_cfg):
    _, agg = _agg(tiny_cfg, privacy={"dp": "central", "noise_multiplier": 1.0}, aggregation={"weighted": False})
    assert isinstance(agg, DPAggregator) and agg.expected_clients == 3
