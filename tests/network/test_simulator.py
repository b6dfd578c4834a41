"""WirelessNetwork: hand-computed round times, determinism, drops (outage, deadline), selection."""

import math

import numpy as np
import pytest

from fedintel.network.clock import AGGREGATION_DONE, CLIENT_DROPPED, COMPUTE_DONE, DOWNLOAD_DONE, UPLOAD_DONE
from fedintel.network.config import DeviceDistribution, DeviceProfileSpec, NetworkConfig
from fedintel.network.report import summarize_round
from fedintel.network.simulator import ClientJob, WirelessNetwork

PL_50M = 128.1 + 37.6 * math.log10(0.05)
TX_W = 10 ** ((23.0 - 30.0) / 10.0)
N0 = 1e-11 / 20e6  # -80 dBm over 20 MHz


def quiet_cfg(**kw) -> NetworkConfig:
    """No shadowing or fading, identical 50 GFLOP/s devices: every number can be worked out by hand."""
    base = dict(shadowing_std_db=0.0, fading="none", devices=DeviceDistribution(distribution="fixed"))
    base.update(kw)
    return NetworkConfig(**base)


def jobs_for(ids, flops=1e12, up=1_000_000, down=1_000_000):
    return [ClientJob(i, flops, up, down) for i in ids]


def test_round_times_by_hand():
    net = WirelessNetwork(
        quiet_cfg(aggregation_time_s=0.25), 2, seed=0, positions=np.array([[50.0, 0], [0, 50.0]])
    )
    rt = net.simulate_round(0, 10.0, jobs_for([0, 1], flops=1e12, up=1_000_000, down=2_000_000))
    t = rt.clients[0]
    # uplink: 10 MHz each, SNR = P g / (N0 * 10 MHz)
    rx = TX_W * 10 ** (-PL_50M / 10)
    rate_up = 10e6 * math.log2(1 + rx / (N0 * 10e6))
    assert rate_up == pytest.approx(89_154_011.5, rel=1e-7)
    assert t.bandwidth_up_hz == pytest.approx(10e6)
    assert t.rate_up_bps == pytest.approx(rate_up, rel=1e-9)
    assert t.upload_s == pytest.approx(8e6 / rate_up, rel=1e-9)
    # downlink: broadcast over 20 MHz at 43 dBm
    rate_down = 20e6 * math.log2(1 + 100 * rx / (N0 * 20e6))
    assert t.download_s == pytest.approx(16e6 / rate_down, rel=1e-9)
    assert t.compute_s == pytest.approx(20.0)  # 1e12 FLOP / 50e9 FLOP/s
    assert t.finish_s == pytest.approx(10.0 + 16e6 / rate_down + 20.0 + 8e6 / rate_up, rel=1e-12)
    assert t.energy_tx_j == pytest.approx(TX_W * 8e6 / rate_up, rel=1e-9)
    assert t.energy_compute_j == pytest.approx(100.0)  # 5 W x 20 s
    assert rt.end_s == pytest.approx(max(c.finish_s for c in rt.clients.values()) + 0.25)
    assert rt.dropped == [] and rt.accepted == [0, 1]


def test_client_timing_alone_by_hand():
    net = WirelessNetwork(quiet_cfg(), 1, seed=0, positions=np.array([[30.0, 40.0]]))  # 50 m
    t = net.client_timing(4, 2.0, ClientJob(0, 5e10, 1_000_000, 0), bandwidth_hz=20e6)
    assert t.rate_up_bps == pytest.approx(158_367_720.0, rel=1e-7)
    assert t.download_s == 0.0
    assert t.finish_s == pytest.approx(2.0 + 1.0 + 8e6 / 158_367_720.0, rel=1e-7)
    with pytest.raises(ValueError, match="bandwidth_hz"):
        net.client_timing(4, 2.0, ClientJob(0, 5e10, 1, 0), bandwidth_hz=0.0)


def test_same_seed_same_world_and_times():
    cfg = NetworkConfig()
    a, b = WirelessNetwork(cfg, 8, seed=42), WirelessNetwork(cfg, 8, seed=42)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.profiles == b.profiles
    # channel does not depend on the order rounds are asked for
    b.channel(5)
    np.testing.assert_array_equal(a.channel(3).gain_up, b.channel(3).gain_up)
    ra, rb = a.simulate_round(3, 0.0, jobs_for(range(8))), b.simulate_round(3, 0.0, jobs_for(range(8)))
    assert [t.finish_s for t in ra.clients.values()] == [t.finish_s for t in rb.clients.values()]
    c = WirelessNetwork(cfg, 8, seed=43)
    assert not np.allclose(a.positions, c.positions)
    assert not np.allclose(a.channel(3).gain_up, a.channel(4).gain_up)


def test_users_are_inside_the_cell_and_do_not_move_when_more_join():
    cfg = NetworkConfig()
    net = WirelessNetwork(cfg, 500, seed=0)
    r = np.linalg.norm(net.positions, axis=1)
    assert r.max() <= 100.0 and r.min() >= 1.0
    # uniform by area: about a quarter of the users within half the radius
    assert np.mean(r < 50.0) == pytest.approx(0.25, abs=0.06)
    small = WirelessNetwork(cfg, 8, seed=0)
    np.testing.assert_array_equal(small.positions, net.positions[:8])


def test_deep_fade_client_is_dropped_not_infinite():
    # client 1 is 100 km away: its rate is ~0 bit/s, far below min_rate_bps
    net = WirelessNetwork(quiet_cfg(), 3, seed=0, positions=np.array([[50.0, 0], [1e5, 0], [0, 80.0]]))
    rt = net.simulate_round(0, 5.0, jobs_for([0, 1, 2]))
    assert rt.dropped == [1]
    t = rt.clients[1]
    assert t.dropped and t.reason == "outage"
    assert t.finish_s == 5.0 and t.rate_up_bps < 1e3 and t.energy_tx_j == 0.0
    # the band is split between the two others
    assert rt.clients[0].bandwidth_up_hz == pytest.approx(10e6)
    assert math.isfinite(rt.end_s) and rt.end_s == pytest.approx(max(rt.clients[c].finish_s for c in (0, 2)))
    assert [e.kind for e in rt.events].count(CLIENT_DROPPED) == 1
    assert net.estimate_times(0, [0, 1], {0: 1e12, 1: 1e12}, {0: 1, 1: 1}, {0: 1, 1: 1})[1] == math.inf
    alone = net.client_timing(0, 1.0, ClientJob(1, 1e12, 1000, 1000), 20e6)
    assert alone.dropped and alone.reason == "outage" and alone.finish_s == 1.0


def test_everyone_in_outage_ends_the_round_at_its_start():
    net = WirelessNetwork(NetworkConfig(min_rate_bps=1e15), 4, seed=1)
    rt = net.simulate_round(2, 7.0, jobs_for(range(4)))
    assert rt.dropped == [0, 1, 2, 3] and rt.end_s == 7.0
    s = summarize_round(rt)
    assert s["dropped"] == 4.0 and s["dropped_outage"] == 4.0 and s["sim_round_s"] == 0.0


def _straggler_net(allocation: str, deadline_s: float) -> WirelessNetwork:
    fast = DeviceProfileSpec(flops_per_s=50e9, memory_bytes=6_000_000_000, power_w=5.0)
    slow = DeviceProfileSpec(flops_per_s=5e9, memory_bytes=6_000_000_000, power_w=5.0)
    cfg = quiet_cfg(
        allocation=allocation,
        deadline_s=deadline_s,
        devices=DeviceDistribution(profiles=[fast, fast, slow]),
    )
    pos = np.array([[20.0, 0], [0, 60.0], [-40.0, 0]])
    return WirelessNetwork(cfg, 3, seed=0, positions=pos)


@pytest.mark.parametrize("allocation", ["equal", "min_max_latency"])
def test_deadline_drops_the_straggler(allocation):
    net = _straggler_net(allocation, deadline_s=30.0)  # fast: 20 s of compute, slow: 200 s
    rt = net.simulate_round(1, 100.0, jobs_for([0, 1, 2], flops=1e12))
    assert rt.dropped == [2]
    t = rt.clients[2]
    assert t.reason == "deadline" and t.finish_s == pytest.approx(130.0)
    assert t.upload_s == 0.0 and t.energy_tx_j == 0.0
    assert t.energy_compute_j == pytest.approx(5.0 * (30.0 - t.download_s))  # it trained until the deadline
    for c in (0, 1):
        assert not rt.clients[c].dropped and rt.clients[c].finish_s <= 130.0
        assert rt.clients[c].bandwidth_up_hz > 0
    assert sum(rt.clients[c].bandwidth_up_hz for c in (0, 1)) == pytest.approx(20e6)
    assert rt.end_s == pytest.approx(max(rt.clients[c].finish_s for c in (0, 1)))
    assert summarize_round(rt)["dropped_deadline"] == 1.0


def test_deadline_nobody_makes_it_ends_at_the_deadline():
    net = _straggler_net("equal", deadline_s=1.0)
    rt = net.simulate_round(0, 0.0, jobs_for([0, 1, 2], flops=1e12))
    assert rt.dropped == [0, 1, 2] and rt.end_s == pytest.approx(1.0)
    assert all(t.reason == "deadline" for t in rt.clients.values())


def test_min_max_latency_never_slower_than_equal():
    for seed in range(5):
        eq = WirelessNetwork(NetworkConfig(), 8, seed=seed)
        mm = WirelessNetwork(NetworkConfig(allocation="min_max_latency"), 8, seed=seed)
        jobs = jobs_for(range(8), flops=2e11, up=5_000_000, down=5_000_000)
        t_eq = eq.simulate_round(seed, 0.0, jobs).end_s
        rt_mm = mm.simulate_round(seed, 0.0, jobs)
        assert rt_mm.end_s <= t_eq * (1 + 1e-12)
        finishes = [t.finish_s for t in rt_mm.clients.values() if not t.dropped]
        assert max(finishes) - min(finishes) < 1e-6 * max(finishes)  # everyone finishes together


def test_estimates_match_the_round():
    net = WirelessNetwork(NetworkConfig(allocation="min_max_latency"), 6, seed=3)
    ids = [0, 2, 3, 5]
    flops = {c: 1e11 * (c + 1) for c in ids}
    up = dict.fromkeys(ids, 3_000_000)
    down = dict.fromkeys(ids, 3_000_000)
    est = net.estimate_times(4, ids, flops, up, down)
    rt = net.simulate_round(4, 0.0, [ClientJob(c, flops[c], up[c], down[c]) for c in ids])
    for c in ids:
        assert est[c] == pytest.approx(rt.clients[c].duration_s, rel=1e-12)


def test_events_are_in_order():
    net = WirelessNetwork(NetworkConfig(aggregation_time_s=0.5), 5, seed=9)
    rt = net.simulate_round(0, 3.0, jobs_for(range(5)))
    times = [e.time_s for e in rt.events]
    assert times == sorted(times) and times[0] >= 3.0
    assert rt.events[-1].kind == AGGREGATION_DONE and rt.events[-1].time_s == rt.end_s
    for c in range(5):
        mine = [e.kind for e in rt.events if e.payload.get("client_id") == c]
        assert mine == [DOWNLOAD_DONE, COMPUTE_DONE, UPLOAD_DONE]


def test_selection_policies():
    cfg = NetworkConfig(selection="fastest_k")
    net = WirelessNetwork(cfg, 10, seed=5)
    picked = net.select(0, list(range(10)), 3, np.random.default_rng(0), 5e11, 4_000_000)
    # the three fastest, each timed alone at a third of the band
    solo = {
        c: net.client_timing(0, 0.0, ClientJob(c, 5e11, 4_000_000, 4_000_000), 20e6 / 3).duration_s
        for c in range(10)
    }
    assert picked == sorted(sorted(solo, key=solo.get)[:3])

    rnd = WirelessNetwork(NetworkConfig(), 10, seed=5)
    a = rnd.select(0, list(range(10)), 4, np.random.default_rng(1), 0.0, 0)
    b = rnd.select(0, list(range(10)), 4, np.random.default_rng(1), 0.0, 0)
    assert a == b and len(set(a)) == 4 and a == sorted(a)

    limit = sorted(solo.values())[4]  # five clients can make it
    dl = WirelessNetwork(NetworkConfig(selection="deadline", deadline_s=limit), 10, seed=5)
    chosen = dl.select(0, list(range(10)), 3, np.random.default_rng(2), 5e11, 4_000_000)
    assert len(chosen) == 3 and all(solo[c] <= limit for c in chosen)
    # asking for 8: each is timed at an eighth of the band, and only those that still make it qualify
    solo8 = {
        c: net.client_timing(0, 0.0, ClientJob(c, 5e11, 4_000_000, 4_000_000), 20e6 / 8).duration_s
        for c in range(10)
    }
    everyone = dl.select(0, list(range(10)), 8, np.random.default_rng(2), 5e11, 4_000_000)
    assert everyone == sorted(c for c in range(10) if solo8[c] <= limit)
    assert 0 < len(everyone) < 5


def test_stragglers_come_from_the_profile_distribution():
    net = WirelessNetwork(NetworkConfig(), 8, seed=0)
    rt = net.simulate_round(0, 0.0, jobs_for(range(8)))
    compute = [t.compute_s for t in rt.clients.values()]
    assert max(compute) / min(compute) > 1.5


def test_links_beyond_the_cell():
    net = WirelessNetwork(NetworkConfig(), 2, seed=0)
    assert net.backhaul_time(1_000_000) == pytest.approx(0.005 + 8e6 / 1e9)
    assert net.cloud_time(0) == pytest.approx(0.02)


def test_edge_servers_serve_their_nearest_clients():
    cfg = NetworkConfig(edge_servers=4)
    net = WirelessNetwork(cfg, 40, seed=2)
    assert net.edge_positions.shape == (4, 2)
    d = np.linalg.norm(net.positions[:, None] - net.edge_positions[None], axis=2)
    np.testing.assert_array_equal(net.client_edge, d.argmin(axis=1))
    np.testing.assert_allclose(net.link_distances_m, np.maximum(d.min(axis=1), 1.0))
    groups = net.edge_groups()
    assert sorted(c for g in groups.values() for c in g) == list(range(40))
    assert set(groups) <= {0, 1, 2, 3}
    plain = WirelessNetwork(NetworkConfig(), 5, seed=2)
    assert (plain.client_edge == -1).all()
    np.testing.assert_array_equal(plain.link_distances_m, plain.distances_m)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"network\.devices\.memory_bytes"):
        WirelessNetwork(NetworkConfig(), 4, seed=0, model_bytes=7_000_000_000)
    net = WirelessNetwork(NetworkConfig(), 4, seed=0, model_bytes=1_000_000_000)
    with pytest.raises(ValueError, match="unknown client 9"):
        net.simulate_round(0, 0.0, jobs_for([9]))
    with pytest.raises(ValueError, match="twice"):
        net.simulate_round(0, 0.0, jobs_for([1, 1]))
    with pytest.raises(ValueError, match="flops"):
        net.simulate_round(0, 0.0, [ClientJob(0, -1.0, 1, 1)])
    with pytest.raises(ValueError, match="positions"):
        WirelessNetwork(NetworkConfig(), 2, seed=0, positions=np.zeros((3, 2)))


def test_summary_adds_up():
    net = WirelessNetwork(NetworkConfig(), 4, seed=0)
    rt = net.simulate_round(0, 1.0, jobs_for(range(4), up=2_000_000, down=3_000_000))
    s = summarize_round(rt)
    assert s["bytes_up"] == 8_000_000 and s["bytes_down"] == 12_000_000
    assert s["sim_time_s"] == rt.end_s and s["sim_round_s"] == pytest.approx(rt.end_s - 1.0)
    assert s["energy_tx_j"] == pytest.approx(sum(t.energy_tx_j for t in rt.clients.values()))
    assert all(isinstance(v, float) for v in s.values())


def test_real_fade_below_the_rate_floor_is_an_outage():
    cfg = NetworkConfig()
    probe = WirelessNetwork(cfg, 8, seed=4)
    ch = probe.channel(6)
    rates = sorted((ch.uplink_rate(c, 20e6 / 8), c) for c in range(8))
    floor = 0.5 * (rates[0][0] + rates[1][0])  # only the most faded client is below it
    net = WirelessNetwork(cfg.model_copy(update={"min_rate_bps": floor}), 8, seed=4)
    rt = net.simulate_round(6, 0.0, jobs_for(range(8)))
    assert rt.dropped == [rates[0][1]] and rt.clients[rates[0][1]].reason == "outage"
    assert all(math.isfinite(t.finish_s) for t in rt.clients.values())
