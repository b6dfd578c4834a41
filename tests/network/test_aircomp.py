"""The over-the-air uplink on the cell: truncation, power control, and one analog slot on the clock."""

import math

import numpy as np
import pytest

from fedintel.network.aircomp import AnalogUplink, analog_slot_s
from fedintel.network.clock import UPLOAD_DONE
from fedintel.network.config import DeviceDistribution, NetworkConfig
from fedintel.network.simulator import ClientJob, WirelessNetwork

TX_W = 10 ** ((23.0 - 30.0) / 10.0)
NOISE_W = 1e-11  # -80 dBm over the band
ENTRIES = 200_000  # a LoRA-sized update: 0.8 MB in float32


def quiet_cfg(**kw) -> NetworkConfig:
    """No shadowing or fading, identical devices: gains follow the distance alone."""
    base = dict(shadowing_std_db=0.0, fading="none", devices=DeviceDistribution(distribution="fixed"))
    base.update(kw)
    return NetworkConfig(**base)


def jobs(n, entries=ENTRIES, flops=1e9):
    return [ClientJob(c, flops, 4 * entries, 4 * entries, entries) for c in range(n)]


def test_slot_formula():
    assert analog_slot_s(200_000, 20e6) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="bandwidth_hz"):
        analog_slot_s(10, 0.0)


def test_far_client_is_truncated_near_one_is_not():
    net = WirelessNetwork(quiet_cfg(cell_radius_m=1000.0), 2, seed=0, positions=np.array([[20.0, 0.0], [900.0, 0.0]]))
    rt = net.simulate_round(1, 0.0, jobs(2), analog=AnalogUplink(truncation="snr", min_snr_db=0.0))
    near, far = rt.clients[0], rt.clients[1]
    assert net.channel(1).snr_up[1] < 1.0 < net.channel(1).snr_up[0]  # far: below 0 dB at full power
    assert not near.truncated and near.upload_s == pytest.approx(ENTRIES / 20e6)
    assert far.truncated and far.upload_s == 0.0 and far.energy_tx_j == 0.0 and not far.dropped
    assert rt.dropped == [] and rt.accepted == [0, 1]  # truncated is not dropped: the aggregator leaves it out
    assert [e.payload["client_id"] for e in rt.events if e.kind == UPLOAD_DONE] == [0]


def test_one_slot_whatever_the_number_of_clients():
    slot = ENTRIES / 20e6
    digital, analog = {}, {}
    for n in (2, 8, 32):
        net = WirelessNetwork(NetworkConfig(devices=DeviceDistribution(distribution="fixed")), n, seed=3)
        a = net.simulate_round(1, 0.0, jobs(n), analog=AnalogUplink(truncation="none"))
        d = net.simulate_round(1, 0.0, jobs(n))
        compute_end = max(t.download_s + t.compute_s for t in a.clients.values())
        assert a.duration_s == pytest.approx(compute_end + slot, rel=1e-12)  # everyone's upload ends together
        assert {t.upload_s for t in a.clients.values()} == {slot}
        assert [t.finish_s for t in a.clients.values()] == pytest.approx([compute_end + slot] * n)
        analog[n] = max(t.upload_s for t in a.clients.values())
        digital[n] = max(t.upload_s for t in d.clients.values())
    assert analog[2] == analog[8] == analog[32]
    assert digital[2] < digital[8] < digital[32]  # FDMA: each share shrinks with more clients
    assert digital[32] > 20 * analog[32]


def test_average_power_constraint_and_energy():
    n = 12
    net = WirelessNetwork(NetworkConfig(), n, seed=1)
    rt = net.simulate_round(2, 0.0, jobs(n), analog=AnalogUplink(truncation="snr", min_snr_db=5.0))
    plan = net.analog_plan(2, range(n), AnalogUplink(truncation="snr", min_snr_db=5.0))
    powers = np.array([rt.clients[c].tx_power_w for c in range(n)])
    np.testing.assert_allclose(powers, plan.power_w)
    assert 0 < plan.num_transmitting < n
    assert powers.mean() == pytest.approx(TX_W, rel=1e-12)  # truncated clients count as 0 W in the average
    sent = plan.transmit
    rx = powers[sent] * net.channel(2).gain_up[sent]
    np.testing.assert_allclose(rx, rx[0], rtol=1e-10)  # channel inversion: every signal arrives aligned
    for c in range(n):
        assert rt.clients[c].energy_tx_j == pytest.approx(powers[c] * ENTRIES / 20e6, rel=1e-12)


def test_peak_constraint_keeps_every_client_under_the_budget():
    net = WirelessNetwork(NetworkConfig(), 10, seed=2)
    plan = net.analog_plan(1, range(10), AnalogUplink(truncation="none", power_constraint="peak"))
    assert plan.power_w.max() == pytest.approx(TX_W, rel=1e-12)  # the weakest client sends at full power
    assert np.all(plan.power_w <= TX_W * (1 + 1e-12))
    avg = net.analog_plan(1, range(10), AnalogUplink(truncation="none"))
    assert avg.power_w.mean() == pytest.approx(TX_W) and avg.power_w.max() > TX_W  # average lets the weak exceed P


def test_truncation_rules():
    g = np.array([1e-12, 1e-10, 1e-9, 1e-8, 1e-11])
    assert AnalogUplink(truncation="gain", gain_threshold_db=-100.0).plan(g, TX_W, NOISE_W).transmit.tolist() == [
        False, True, True, True, False]
    # snr: P g / noise >= 10 dB  <=>  g >= 10 * 1e-11 / 0.1995
    assert AnalogUplink(truncation="snr", min_snr_db=10.0).plan(g, TX_W, NOISE_W).transmit.tolist() == [
        False, False, True, True, False]
    assert AnalogUplink(truncation="fraction", truncation_fraction=0.4).plan(g, TX_W, NOISE_W).transmit.tolist() == [
        False, True, True, True, False]
    assert AnalogUplink(truncation="none").plan(g, TX_W, NOISE_W).transmit.all()
    none = AnalogUplink(power_control="none", truncation="none").plan(g, TX_W, NOISE_W)
    assert np.all(none.power_w == TX_W)
    with pytest.raises(ValueError, match="truncation_fraction"):
        AnalogUplink(truncation="fraction", truncation_fraction=1.0)


def test_farther_cells_truncate_more_and_more_power_truncates_fewer():
    truncated = {}
    for radius in (50.0, 100.0, 250.0, 500.0):
        net = WirelessNetwork(NetworkConfig(cell_radius_m=radius), 40, seed=5)
        truncated[radius] = net.analog_plan(1, range(40), AnalogUplink()).transmit.size - \
            net.analog_plan(1, range(40), AnalogUplink()).num_transmitting
    assert truncated[50.0] <= truncated[100.0] <= truncated[250.0] <= truncated[500.0]
    assert truncated[500.0] > truncated[50.0]
    by_power = [WirelessNetwork(NetworkConfig(cell_radius_m=500.0, tx_power_dbm=p), 40, seed=5)
                .analog_plan(1, range(40), AnalogUplink()).num_transmitting for p in (0.0, 10.0, 20.0)]
    assert by_power[0] < by_power[1] < by_power[2]


def test_slots_are_back_to_back():
    slot = ENTRIES / 20e6
    net = WirelessNetwork(quiet_cfg(), 4, seed=0, positions=np.array([[30.0, 0], [0, 30.0], [-30.0, 0], [0, -30.0]]))
    one = net.simulate_round(1, 5.0, jobs(4), analog=AnalogUplink(truncation="none"))
    two = net.simulate_round(1, 5.0, jobs(4), analog=AnalogUplink(truncation="none"), slots=[[0, 2], [1, 3]])
    assert two.duration_s == pytest.approx(one.duration_s + slot)
    assert two.clients[1].finish_s - two.clients[0].finish_s == pytest.approx(slot)
    with pytest.raises(ValueError, match="slots"):
        net.simulate_round(1, 5.0, jobs(4), analog=AnalogUplink(), slots=[[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="analog"):
        net.simulate_round(1, 5.0, jobs(4), slots=[[0, 1, 2, 3]])


def test_deadline_drops_the_latest_to_fit_the_slot():
    cfg = quiet_cfg(devices=DeviceDistribution(distribution="lognormal", spread=1.0))
    net = WirelessNetwork(cfg, 6, seed=4, positions=np.full((6, 2), 20.0))
    free = net.simulate_round(1, 0.0, jobs(6, flops=1e11), analog=AnalogUplink(truncation="none"))
    ends = sorted(t.download_s + t.compute_s for t in free.clients.values())
    deadline = (ends[-2] + ends[-1]) / 2 + ENTRIES / 20e6  # room for all but the slowest
    net = WirelessNetwork(cfg.model_copy(update={"deadline_s": deadline}), 6, seed=4, positions=np.full((6, 2), 20.0))
    rt = net.simulate_round(1, 0.0, jobs(6, flops=1e11), analog=AnalogUplink(truncation="none"))
    assert len(rt.dropped) == 1 and rt.clients[rt.dropped[0]].reason == "deadline"
    assert rt.duration_s == pytest.approx(ends[-2] + ENTRIES / 20e6) and rt.duration_s <= deadline


def test_selection_estimates_one_slot():
    cfg = NetworkConfig(selection="fastest_k", devices=DeviceDistribution(distribution="fixed"), bandwidth_hz=1e5)
    net = WirelessNetwork(cfg, 8, seed=0)
    rng = np.random.default_rng(0)
    digital = net.select(1, list(range(8)), 3, rng, 1e9, 4 * ENTRIES)
    analog = net.select(1, list(range(8)), 3, rng, 1e9, 4 * ENTRIES, analog=AnalogUplink(), entries_estimate=ENTRIES)
    assert len(digital) == len(analog) == 3
    # same devices, one slot for all: only the download (best channels first) tells them apart
    down = {c: net.channel(1).downlink_rate(c) for c in range(8)}
    assert analog == sorted(sorted(down, key=lambda c: -down[c])[:3])
    assert math.isfinite(analog_slot_s(ENTRIES, 1e5))
