"""Path loss, Shannon rates and the per-round channel against hand-computed numbers."""

import math

import numpy as np
import pytest

from fedintel.network.channel import dbm_to_w, draw_channel, path_loss_db, shannon_rate_bps, w_to_dbm
from fedintel.network.config import NetworkConfig, PathLossConfig

# 128.1 + 37.6 * log10(0.05) by hand
PL_50M = 79.18127216


def test_3gpp_path_loss_by_hand():
    cfg = PathLossConfig()
    assert path_loss_db(cfg, 50.0) == pytest.approx(PL_50M, abs=1e-6)
    assert path_loss_db(cfg, 100.0) == pytest.approx(90.5, abs=1e-9)  # 128.1 - 37.6
    assert path_loss_db(cfg, 1000.0) == pytest.approx(128.1, abs=1e-9)
    arr = path_loss_db(cfg, np.array([50.0, 100.0]))
    np.testing.assert_allclose(arr, [PL_50M, 90.5], atol=1e-6)


def test_log_distance_path_loss_by_hand():
    cfg = PathLossConfig(model="log_distance", exponent=3.0, ref_distance_m=1.0, ref_loss_db=40.0)
    assert path_loss_db(cfg, 10.0) == pytest.approx(70.0)  # 40 + 30 * 1
    assert path_loss_db(cfg, 100.0) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="distances > 0"):
        path_loss_db(cfg, 0.0)


def test_power_conversions():
    assert dbm_to_w(23.0) == pytest.approx(0.19952623, rel=1e-7)
    assert dbm_to_w(30.0) == pytest.approx(1.0)
    assert w_to_dbm(1e-11) == pytest.approx(-80.0)


def test_shannon_rate_by_hand():
    # 50 m, 23 dBm, -80 dBm over 20 MHz: SNR = 10^((23 - 79.1813 + 80) / 10) = 240.92 (23.82 dB)
    rx_w = 10 ** ((23.0 - PL_50M - 30.0) / 10.0)
    n0 = 1e-11 / 20e6
    assert rx_w / (n0 * 20e6) == pytest.approx(240.91996, rel=1e-6)
    assert shannon_rate_bps(20e6, rx_w, n0) == pytest.approx(158_367_720.0, rel=1e-7)
    # half the band: half the noise, so SNR doubles: 10 MHz * log2(1 + 481.84)
    assert shannon_rate_bps(10e6, rx_w, n0) == pytest.approx(89_154_011.5, rel=1e-7)
    assert shannon_rate_bps(0.0, rx_w, n0) == 0.0


def test_rate_is_increasing_and_power_limited():
    n0, rx = 5e-19, 1e-9
    b = np.geomspace(1e3, 1e12, 200)
    r = shannon_rate_bps(b, rx, n0)
    assert np.all(np.diff(r) > 0)
    assert r[-1] < rx / (n0 * math.log(2)) and r[-1] == pytest.approx(rx / (n0 * math.log(2)), rel=1e-2)


def test_channel_without_randomness_matches_hand_numbers():
    cfg = NetworkConfig(shadowing_std_db=0.0, fading="none")
    ch = draw_channel(cfg, np.array([50.0, 100.0]), seed=0, round_idx=3)
    np.testing.assert_allclose(ch.path_loss_db, [PL_50M, 90.5], atol=1e-6)
    assert ch.snr_up[0] == pytest.approx(240.91996, rel=1e-6)
    assert 10 * math.log10(ch.snr_up[1]) == pytest.approx(23.0 - 90.5 + 80.0)
    assert ch.uplink_rate(0, 20e6) == pytest.approx(158_367_720.0, rel=1e-7)
    # downlink at 43 dBm over the whole band: SNR 20 dB higher
    assert ch.downlink_rate(0) == pytest.approx(20e6 * math.log2(1 + 240.91996 * 100), rel=1e-6)
    # snr_hz / b is the SNR at share b
    assert ch.snr_hz_up[0] / 10e6 == pytest.approx(2 * 240.91996, rel=1e-6)


def test_fading_and_shadowing_statistics():
    cfg = NetworkConfig()
    ch = draw_channel(cfg, np.full(20000, 50.0), seed=1, round_idx=0)
    assert ch.fading_up.mean() == pytest.approx(1.0, abs=0.03)  # |h|^2 ~ Exp(1)
    assert ch.shadowing_db.std() == pytest.approx(8.0, abs=0.2)
    assert not np.allclose(ch.fading_up, ch.fading_down)  # independent up/down fades


def test_channel_is_deterministic_per_seed_and_round():
    cfg = NetworkConfig()
    d = np.array([10.0, 40.0, 90.0])
    a = draw_channel(cfg, d, seed=7, round_idx=5)
    b = draw_channel(cfg, d, seed=7, round_idx=5)
    np.testing.assert_array_equal(a.gain_up, b.gain_up)
    np.testing.assert_array_equal(a.gain_down, b.gain_down)
    c = draw_channel(cfg, d, seed=7, round_idx=6)
    assert not np.allclose(a.gain_up, c.gain_up)  # redrawn per round
    e = draw_channel(cfg, d, seed=8, round_idx=5)
    assert not np.allclose(a.gain_up, e.gain_up)
