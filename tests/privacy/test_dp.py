"""Clipping, Gaussian noise, the DP-FedAvg aggregator, local DP, and the privacy config."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fedintel.aggregation import get_aggregator
from fedintel.aggregation.base import RoundContext
from fedintel.aggregation.validate import update_norm
from fedintel.privacy.accountant import compute_epsilon
from fedintel.privacy.config import PrivacyConfig
from fedintel.privacy.dp import (
    DPAggregator,
    add_gaussian_noise,
    clip_delta,
    privatize_local,
    privatize_sum,
    round_generator,
)
from fedintel.types import AdapterState, Update


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_state(seed: int, scale: float = 1.0) -> AdapterState:
    g = gen(seed)
    return {
        "lora_A": torch.randn(8, 64, generator=g) * scale,
        "lora_B": torch.randn(64, 8, generator=g) * scale,
    }


def upd(cid: int, delta: AdapterState, n: int = 10) -> Update:
    return Update(
        client_id=cid, delta=delta, num_samples=n, base_version=0, train_loss=0.0, steps=1, tokens=1
    )


def test_clip_bounds_norm_and_keeps_direction() -> None:
    big = rand_state(0, scale=3.0)
    clipped = clip_delta(big, 1.0)
    assert update_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    ratio = clipped["lora_A"] / big["lora_A"]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one factor for all tensors
    small = rand_state(1, scale=0.001)
    assert update_norm(small) < 1.0
    assert all(torch.equal(clip_delta(small, 1.0)[k], small[k]) for k in small)


def test_noise_is_deterministic_and_has_the_requested_std() -> None:
    zeros = {"w": torch.zeros(200_000, dtype=torch.float64)}
    a = add_gaussian_noise(zeros, 0.3, gen(7))
    b = add_gaussian_noise(zeros, 0.3, gen(7))
    c = add_gaussian_noise(zeros, 0.3, gen(8))
    assert torch.equal(a["w"], b["w"])
    assert not torch.equal(a["w"], c["w"])
    assert float(a["w"].std()) == pytest.approx(0.3, rel=0.01)
    assert abs(float(a["w"].mean())) < 0.003


def test_noise_does_not_depend_on_key_insertion_order() -> None:
    s = {"a": torch.zeros(5), "b": torch.zeros(3)}
    r = {"b": torch.zeros(3), "a": torch.zeros(5)}
    x, y = add_gaussian_noise(s, 1.0, gen(1)), add_gaussian_noise(r, 1.0, gen(1))
    assert torch.equal(x["a"], y["a"]) and torch.equal(x["b"], y["b"])


def test_dp_aggregator_noise_std_is_sigma_c_over_m() -> None:
    # identical clipped inputs, so the spread of the output is all noise: std = sigma * C / m
    clip, sigma, m = 0.5, 2.0, 8.0
    ups = [upd(i, {"w": torch.full((100_000,), 10.0)}) for i in range(4)]  # norm >> C: all clipped
    agg = DPAggregator(clip_norm=clip, noise_multiplier=sigma, expected_clients=m, seed=3)
    ctx = RoundContext()
    out = agg.aggregate(ups, {}, ctx)["w"].double()
    per_client = clip / 100_000**0.5  # each clipped coordinate
    assert float(out.mean()) == pytest.approx(4 * per_client / m, abs=0.003)
    assert float(out.std()) == pytest.approx(sigma * clip / m, rel=0.01)
    assert ctx.stats["dp_clipped_fraction"] == 1.0


def test_dp_aggregator_equal_weights_and_fixed_denominator() -> None:
    ups = [upd(0, {"w": torch.tensor([0.3, 0.0])}, n=1), upd(1, {"w": torch.tensor([0.0, 0.4])}, n=1000)]
    agg = DPAggregator(clip_norm=1.0, noise_multiplier=0.0, expected_clients=4)
    assert agg.aggregate(ups, {})["w"].tolist() == pytest.approx([0.075, 0.1])  # (sum) / 4, sizes ignored


def test_dp_aggregator_rounds_are_reproducible() -> None:
    ups = [upd(i, rand_state(i)) for i in range(3)]
    a1, a2 = DPAggregator(1.0, 1.0, 3, seed=5), DPAggregator(1.0, 1.0, 3, seed=5)
    first = a1.aggregate(ups, {})
    second = a1.aggregate(ups, {})
    assert not torch.equal(first["lora_A"], second["lora_A"])  # fresh noise every round
    # a resumed run jumping to round 1 draws round 1's noise
    assert torch.equal(a2.aggregate(ups, {}, RoundContext(1))["lora_A"], second["lora_A"])


def test_dp_is_a_privacy_setting_not_an_aggregation_rule() -> None:
    # DP-FedAvg wraps the run's rule (privacy.dp: central), so aggregation.rule does not offer it
    with pytest.raises(ValueError, match="unknown aggregation rule 'dp_fedavg'"):
        get_aggregator("dp_fedavg", clip_norm=0.1, noise_multiplier=1.0, expected_clients=5)


def test_privatize_sum_matches_aggregator() -> None:
    ups = [upd(i, rand_state(i)) for i in range(3)]
    total = {k: sum(clip_delta(u.delta, 1.0)[k].double() for u in ups) for k in ups[0].delta}
    direct = privatize_sum(total, 3, 1.0, 1.5, round_generator(9, 0))
    via_agg = DPAggregator(1.0, 1.5, 3, seed=9).aggregate(ups, {})
    for k in direct:
        assert torch.allclose(direct[k].float(), via_agg[k], atol=1e-6)


def test_local_dp_clips_then_adds_sigma_c_noise() -> None:
    delta = {"w": torch.full((50_000,), 1.0, dtype=torch.float64)}
    out = privatize_local(delta, clip=2.0, sigma=0.5, generator=gen(0))["w"]
    assert float(out.mean()) == pytest.approx(2.0 / 50_000**0.5, abs=0.01)
    assert float(out.std()) == pytest.approx(0.5 * 2.0, rel=0.02)
    again = privatize_local(delta, clip=2.0, sigma=0.5, generator=gen(0))["w"]
    assert torch.equal(out, again)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"privacy\.noise_multiplier or privacy\.target_epsilon"):
        PrivacyConfig(dp="central")
    with pytest.raises(ValidationError, match=r"only one of privacy\.noise_multiplier"):
        PrivacyConfig(dp="central", noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(ValidationError, match=r"privacy\.noise_multiplier is set but privacy\.dp is 'none'"):
        PrivacyConfig(noise_multiplier=1.0)
    with pytest.raises(ValidationError, match="clip_norm"):
        PrivacyConfig(dp="central", noise_multiplier=1.0, clip_norm=0)
    with pytest.raises(ValidationError, match="extra"):
        PrivacyConfig(epsilon=3.0)


def test_config_derives_sigma_from_target_epsilon() -> None:
    cfg = PrivacyConfig(dp="central", target_epsilon=4.0, delta=1e-5, secure_aggregation=True)
    sigma = cfg.resolve_noise_multiplier(rounds=30, sample_rate=0.2)
    assert compute_epsilon(sigma, 0.2, 30, 1e-5) <= 4.0 < compute_epsilon(0.98 * sigma, 0.2, 30, 1e-5)
    assert PrivacyConfig(dp="central", noise_multiplier=0.7).resolve_noise_multiplier(10, 0.5) == 0.7
    assert PrivacyConfig().resolve_noise_multiplier(10, 0.5) == 0.0
    local = PrivacyConfig(dp="local", target_epsilon=8.0).resolve_noise_multiplier(rounds=5, sample_rate=0.1)
    assert compute_epsilon(local / 2, 1.0, 5, 1e-5) <= 8.0
