"""Over-the-air aggregation: noisy FedAvg whose error falls with SNR, deterministic per seed."""

import pytest
import torch

from fedintel.aggregation import get_aggregator
from fedintel.aggregation.fedavg import weighted_mean
from fedintel.aggregation.ota import OverTheAir
from fedintel.types import Update


def make_updates(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Update(
            client_id=i,
            delta={"a.lora_A": torch.randn(4, 16, generator=g), "a.lora_B": torch.randn(16, 4, generator=g)},
            num_samples=10 * (i + 1),
            base_version=0,
            train_loss=1.0,
            steps=1,
            tokens=1,
        )
        for i in range(n)
    ]


def mse(a, b):
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    return num / sum(t.numel() for t in a.values())


def exact(updates, ids=None):
    chosen = [u for u in updates if ids is None or u.client_id in ids]
    return weighted_mean([u.delta for u in chosen], [u.num_samples for u in chosen])


def test_registered_as_ota():
    agg = get_aggregator("ota", snr_db=10.0)
    assert isinstance(agg, OverTheAir) and agg.name == "ota"


def test_error_shrinks_as_snr_grows():
    ups = make_updates()
    errors = []
    for snr_db in (0.0, 10.0, 20.0, 30.0, 40.0):
        agg = OverTheAir(snr_db=snr_db, seed=3)
        out = agg.aggregate(ups, {})
        # compare with FedAvg over the clients that actually transmitted (truncation may silence some)
        errors.append(mse(out, exact(ups, set(agg.last_transmitting))))
        assert agg.last_info["ota_mse_expected"] > 0
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    # same fades and noise draws: the error variance scales exactly as 1 / SNR (10 dB -> x10)
    for a, b in zip(errors, errors[1:], strict=False):
        assert a / b == pytest.approx(10.0, rel=1e-6)


def test_very_high_snr_without_truncation_is_fedavg():
    ups = make_updates()
    agg = OverTheAir(snr_db=150.0, truncation_gain=0.0, seed=1)
    out = agg.aggregate(ups, {})
    ref = exact(ups)
    assert agg.last_info["ota_transmitting"] == 6
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)
        assert out[k].dtype == ref[k].dtype and out[k].shape == ref[k].shape


def test_truncation_silences_deep_fades():
    ups = make_updates(n=40)
    agg = OverTheAir(snr_db=20.0, truncation_gain=0.5, seed=0)  # P(|h|^2 < 0.5) = 1 - e^-0.5 ~ 0.39
    agg.aggregate(ups, {})
    assert 5 <= agg.last_info["ota_truncated"] <= 30
    assert len(agg.last_transmitting) == agg.last_info["ota_transmitting"]
    everyone = OverTheAir(snr_db=20.0, truncation_gain=1e9, seed=0)
    out = everyone.aggregate(ups, {})
    assert everyone.last_transmitting == [] and all(float(t.abs().sum()) == 0.0 for t in out.values())


def test_truncation_helps_at_a_given_snr():
    # without truncation, the deepest fade sets the common scale and amplifies the noise
    ups = make_updates(n=20)
    loose = OverTheAir(snr_db=20.0, truncation_gain=0.0, seed=4)
    tight = OverTheAir(snr_db=20.0, truncation_gain=0.1, seed=4)
    loose.aggregate(ups, {})
    tight.aggregate(ups, {})
    assert tight.last_info["ota_mse_expected"] < loose.last_info["ota_mse_expected"]


def test_no_power_control_is_biased_towards_good_channels():
    ups = make_updates()
    agg = OverTheAir(snr_db=200.0, power_control="none", seed=0)
    out = agg.aggregate(ups, {})
    assert agg.last_info["ota_truncated"] == 0
    assert mse(out, exact(ups)) > 1e-4  # channel-weighted mean, not FedAvg, even without noise


def test_deterministic_per_seed_with_fresh_draws_each_call():
    ups = make_updates()
    a, b = OverTheAir(seed=7), OverTheAir(seed=7)
    first_a, first_b = a.aggregate(ups, {}), b.aggregate(ups, {})
    for k in first_a:
        assert torch.equal(first_a[k], first_b[k])
    second = a.aggregate(ups, {})
    assert not torch.equal(second["a.lora_A"], first_a["a.lora_A"])
    assert a.calls == 2
    other = OverTheAir(seed=8).aggregate(ups, {})
    assert not torch.equal(other["a.lora_A"], first_a["a.lora_A"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="power_control"):
        OverTheAir(power_control="magic")
    with pytest.raises(ValueError, match="truncation_gain"):
        OverTheAir(truncation_gain=-1.0)
    with pytest.raises(ValueError, match="no updates"):
        OverTheAir().aggregate([], {})
