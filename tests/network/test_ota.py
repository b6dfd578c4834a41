"""Over-the-air aggregation (BAA) on the cell's channel, and the fixed-SNR model for runs without a network."""

import numpy as np
import pytest
import torch

from fedintel.aggregation import get_aggregator
from fedintel.aggregation.base import RoundContext
from fedintel.aggregation.fedavg import weighted_mean
from fedintel.aggregation.ota import OverTheAir
from fedintel.config import dump_config, parse_config
from fedintel.errors import ConfigError
from fedintel.network.aircomp import AnalogUplink
from fedintel.network.config import NetworkConfig
from fedintel.network.simulator import WirelessNetwork
from fedintel.types import Update
from tests.conftest import tiny_config


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


def exact(updates, ids=None, weighted=True):
    chosen = [u for u in updates if ids is None or u.client_id in ids]
    return weighted_mean([u.delta for u in chosen], [u.num_samples if weighted else 1 for u in chosen])


def cell_ctx(round_idx=1, n=6, seed=0, **net):
    cfg = NetworkConfig(**net)
    return RoundContext(round_idx, channel=WirelessNetwork(cfg, n, seed=seed).channel(round_idx))


def test_registered_as_ota():
    agg = get_aggregator("ota", channel="fixed_snr", snr_db=10.0)
    assert isinstance(agg, OverTheAir) and agg.name == "ota"


def test_gains_come_from_the_cell_far_client_truncated_near_one_not():
    cfg = NetworkConfig(cell_radius_m=1000.0, shadowing_std_db=0.0, fading="none")
    net = WirelessNetwork(cfg, 3, seed=0, positions=np.array([[15.0, 0.0], [0.0, 40.0], [950.0, 0.0]]))
    agg = OverTheAir(uplink=AnalogUplink(truncation="snr", min_snr_db=0.0))
    ups = make_updates(3)
    out = agg.aggregate(ups, {}, RoundContext(1, channel=net.channel(1)))
    assert agg.last_transmitting == [0, 1] and agg.last_info["ota_truncated"] == 1
    assert mse(out, exact(ups, {0, 1})) < 1e-3 * mse(exact(ups, {0, 1}), {k: 0 * v for k, v in out.items()})


def test_noiseless_without_truncation_is_fedavg():
    ups = make_updates()
    ctx = cell_ctx(noise_dbm=-300.0)
    for weighted in (False, True):
        agg = OverTheAir(uplink=AnalogUplink(truncation="none"), weighted=weighted)
        out = agg.aggregate(ups, {}, ctx)
        ref = exact(ups, weighted=weighted)
        assert agg.last_info["ota_transmitting"] == 6
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-6)
            assert out[k].dtype == ref[k].dtype and out[k].shape == ref[k].shape


def test_error_grows_with_radius_and_falls_with_power():
    ups = make_updates(8)
    target = exact(ups)

    def error(**net):
        agg = OverTheAir(uplink=AnalogUplink(truncation="none"), seed=2)
        out = agg.aggregate(ups, {}, cell_ctx(n=8, seed=4, **net))
        return mse(out, target), agg.last_info["ota_mse_expected"]

    by_radius = [error(cell_radius_m=r) for r in (50.0, 100.0, 250.0, 500.0)]
    assert all(a[1] < b[1] for a, b in zip(by_radius, by_radius[1:], strict=False))  # same draws, farther users
    assert all(a[0] < b[0] for a, b in zip(by_radius, by_radius[1:], strict=False))
    by_power = [error(cell_radius_m=250.0, tx_power_dbm=p) for p in (0.0, 10.0, 20.0)]
    for a, b in zip(by_power, by_power[1:], strict=False):  # rho scales with P: the error variance as 1 / P
        assert a[1] / b[1] == pytest.approx(10.0, rel=1e-9)
        assert a[0] / b[0] == pytest.approx(10.0, rel=1e-6)


def test_measured_error_matches_the_expected_one():
    ups = make_updates(6)
    errs = []
    for rnd in range(1, 41):
        agg = OverTheAir(uplink=AnalogUplink(truncation="none"), seed=1)
        out = agg.aggregate(ups, {}, cell_ctx(rnd, cell_radius_m=300.0))
        errs.append(mse(out, exact(ups)) / agg.last_info["ota_mse_expected"])
    assert np.mean(errs) == pytest.approx(1.0, abs=0.05)  # 640 entries x 40 rounds of N(0, expected)


def test_fixed_snr_error_scales_as_one_over_snr():
    ups = make_updates()
    errors = []
    for snr_db in (0.0, 10.0, 20.0, 30.0):
        agg = OverTheAir(channel="fixed_snr", snr_db=snr_db, uplink=AnalogUplink(truncation="gain",
                                                                                gain_threshold_db=-13.0), seed=3)
        out = agg.aggregate(ups, {})
        errors.append(mse(out, exact(ups, set(agg.last_transmitting))))
    for a, b in zip(errors, errors[1:], strict=False):  # same fades and noise draws, 10 dB apart
        assert a / b == pytest.approx(10.0, rel=1e-6)


def test_all_truncated_gives_a_zero_delta():
    agg = OverTheAir(uplink=AnalogUplink(truncation="snr", min_snr_db=200.0))
    out = agg.aggregate(make_updates(), {}, cell_ctx())
    assert agg.last_transmitting == [] and all(float(t.abs().sum()) == 0.0 for t in out.values())


def test_no_power_control_is_biased_towards_good_channels():
    ups = make_updates()
    agg = OverTheAir(uplink=AnalogUplink(power_control="none", truncation="none"))
    out = agg.aggregate(ups, {}, cell_ctx(noise_dbm=-300.0))
    assert agg.last_info["ota_truncated"] == 0
    assert mse(out, exact(ups)) > 1e-4  # channel-weighted mean, not FedAvg, even without noise


def test_deterministic_per_seed_fresh_noise_each_round():
    ups = make_updates()
    a = OverTheAir(seed=7).aggregate(ups, {}, cell_ctx(1))
    b = OverTheAir(seed=7).aggregate(ups, {}, cell_ctx(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(OverTheAir(seed=7).aggregate(ups, {}, cell_ctx(2))["a.lora_A"], a["a.lora_A"])
    assert not torch.equal(OverTheAir(seed=8).aggregate(ups, {}, cell_ctx(1))["a.lora_A"], a["a.lora_A"])


def test_cell_channel_missing_or_bad_updates_are_clear_errors():
    with pytest.raises(ConfigError, match="aggregation.channel"):
        OverTheAir().aggregate(make_updates(), {}, RoundContext(1))
    with pytest.raises(ValueError, match="no updates"):
        OverTheAir().aggregate([], {}, cell_ctx())
    ups = make_updates(2)
    ups[1].delta["a.lora_A"] = torch.zeros(2, 16)
    with pytest.raises(ValueError, match="client 1"):
        OverTheAir().aggregate(ups, {}, cell_ctx(n=2))
    with pytest.raises(ValueError, match="aggregation.channel"):
        OverTheAir(channel="magic")


@pytest.mark.parametrize("sections, fields", [
    ({"aggregation": {"rule": "ota"}, "network": {"enabled": False}}, ("aggregation.channel", "network.enabled")),
    ({"aggregation": {"rule": "ota", "channel": "fixed_snr"}}, ("aggregation.channel fixed_snr", "network.enabled")),
    ({"aggregation": {"rule": "ota", "snr_db": 10.0}}, ("aggregation.snr_db", "channel")),
    ({"aggregation": {"rule": "ota", "truncation": "gain", "min_snr_db": 3.0}},
     ("aggregation.min_snr_db", "truncation")),
    ({"aggregation": {"rule": "ota", "truncation_fraction": 0.2}}, ("aggregation.truncation_fraction", "truncation")),
    ({"aggregation": {"rule": "ota", "truncation": "fraction", "truncation_fraction": 1.0}},
     ("aggregation.truncation_fraction",)),
    ({"aggregation": {"rule": "ota", "power_control": "none", "power_constraint": "peak"}},
     ("aggregation.power_constraint", "power_control")),
    ({"aggregation": {"rule": "ota", "gain_threshold_db": float("inf"), "truncation": "gain"}},
     ("aggregation.gain_threshold_db",)),
    ({"aggregation": {"rule": "ota", "truncation": "sometimes"}}, ("aggregation.truncation",)),
    ({"aggregation": {"rule": "ota"}, "federation": {"scheme": "async"}, "async": {"mode": "fedbuff"}},
     ("federation.scheme async", "ota")),
    ({"aggregation": {"rule": "ota"}, "output": {"save_client_updates": True}},
     ("output.save_client_updates", "aggregation.rule ota")),
])
def test_bad_config_names_the_field(sections, fields, tmp_path):
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, **sections)
    assert all(f in str(err.value) for f in fields), str(err.value)


def test_good_configs_validate_and_survive_a_dump(tmp_path):
    cfg = tiny_config(tmp_path, aggregation={"rule": "ota", "truncation": "fraction", "truncation_fraction": 0.25,
                                             "power_constraint": "peak"})
    again = parse_config(__import__("yaml").safe_load(dump_config(cfg)))
    assert again.aggregation == cfg.aggregation
    spec = again.aggregation.analog_uplink()
    assert spec == AnalogUplink(power_constraint="peak", truncation="fraction", truncation_fraction=0.25)
    off = tiny_config(tmp_path, aggregation={"rule": "ota", "channel": "fixed_snr", "snr_db": 15.0},
                      network={"enabled": False})
    assert off.aggregation.snr_db == 15.0
    assert tiny_config(tmp_path).aggregation.analog_uplink() is None  # fedavg uploads digitally
