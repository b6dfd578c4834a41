"""Bandwidth allocation: the min-max policy is optimal (vs brute force) and beats equal shares."""

import itertools
import math

import numpy as np
import pytest

from fedintel.network.allocation import (
    bandwidth_needed,
    equal_split,
    min_max_latency,
    min_max_latency_split,
)

B = 20e6


def _finish(shares, fixed, bits, snr_hz):
    """Latest finish time under the white-noise Shannon model (independent re-implementation)."""
    worst = 0.0
    for i, b in shares.items():
        rate = b * math.log2(1 + snr_hz[i] / b) if b > 0 else 0.0
        t = fixed[i] + (bits[i] / rate if bits[i] > 0 else 0.0) if rate > 0 or bits[i] == 0 else math.inf
        worst = max(worst, t)
    return worst


def test_equal_split():
    assert equal_split(B, [3, 1, 2]) == {3: B / 3, 1: B / 3, 2: B / 3}
    assert equal_split(B, []) == {}
    with pytest.raises(ValueError, match="bandwidth_hz"):
        equal_split(0.0, [1])


def test_two_clients_match_brute_force():
    fixed = {0: 2.0, 1: 0.5}
    bits = {0: 8e6, 1: 3.2e7}
    snr_hz = {0: 5e9, 1: 4e8}  # client 1: weak channel, more bits, but computes faster
    shares, t_opt = min_max_latency(B, fixed, bits, snr_hz=snr_hz)
    assert sum(shares.values()) == pytest.approx(B, rel=1e-12)
    assert _finish(shares, fixed, bits, snr_hz) == pytest.approx(t_opt, rel=1e-9)
    grid = np.linspace(1, B - 1, 20001)
    brute = min(_finish({0: g, 1: B - g}, fixed, bits, snr_hz) for g in grid)
    assert t_opt <= brute + 1e-9  # never worse than any grid point
    assert t_opt == pytest.approx(brute, rel=1e-5)  # and the grid closes in on it
    # at the optimum both clients finish together
    for i in shares:
        rate = shares[i] * math.log2(1 + snr_hz[i] / shares[i])
        assert fixed[i] + bits[i] / rate == pytest.approx(t_opt, rel=1e-9)


def test_three_clients_match_brute_force():
    fixed = {4: 1.0, 7: 0.5, 9: 0.2}
    bits = {4: 2e7, 7: 4e7, 9: 6e7}
    snr_hz = {4: 2e9, 7: 3e8, 9: 1e10}
    shares, t_opt = min_max_latency(B, fixed, bits, snr_hz=snr_hz)
    steps = 400
    brute = math.inf
    for i, j in itertools.product(range(1, steps), repeat=2):
        if i + j >= steps:
            continue
        cand = {4: B * i / steps, 7: B * j / steps, 9: B * (steps - i - j) / steps}
        brute = min(brute, _finish(cand, fixed, bits, snr_hz))
    assert t_opt <= brute + 1e-9
    assert t_opt == pytest.approx(brute, rel=5e-3)  # grid step B/400
    eq = _finish(equal_split(B, [4, 7, 9]), fixed, bits, snr_hz)
    assert t_opt < eq


def test_fixed_snr_has_the_closed_form():
    # With a bandwidth-independent SNR, rate = b * eff, so b_i = bits_i / ((T - f_i) eff_i) and
    # sum_i b_i = B gives T; here f = 0 for all: T = sum_i(bits_i / eff_i) / B.
    snr = {0: 15.0, 1: 3.0}  # eff = 4 and 2 bit/s/Hz
    bits = {0: 8e7, 1: 4e7}
    shares, t_opt = min_max_latency(B, {0: 0.0, 1: 0.0}, bits, snr=snr)
    t_hand = (8e7 / 4 + 4e7 / 2) / B  # = 2 s
    assert t_opt == pytest.approx(t_hand, rel=1e-10)
    assert shares[0] == pytest.approx(B / 2, rel=1e-9) and shares[1] == pytest.approx(B / 2, rel=1e-9)


def test_generic_rate_fn_agrees_with_snr_hz():
    fixed = {0: 1.0, 1: 2.0}
    bits = {0: 1e7, 1: 1e7}
    snr_hz = {0: 1e9, 1: 3e9}
    by_snr = min_max_latency_split(B, fixed, bits, snr_hz=snr_hz)
    by_fn = min_max_latency_split(
        B, fixed, bits, rate_fn=lambda c, b: b * math.log2(1 + snr_hz[c] / b) if b > 0 else 0.0
    )
    for c in by_snr:
        assert by_fn[c] == pytest.approx(by_snr[c], rel=1e-8)


def test_clients_with_nothing_to_send_get_no_band():
    shares = min_max_latency_split(B, {0: 1.0, 1: 5.0}, {0: 1e7, 1: 0.0}, snr_hz={0: 1e9, 1: 1e9})
    assert shares[1] == 0.0 and shares[0] == pytest.approx(B)


def test_bandwidth_needed_by_hand_and_infeasible():
    # fixed SNR 15 -> 4 bit/s/Hz; 4e7 bits in 1 s after 1 s of compute -> 1e7 Hz
    need = bandwidth_needed(B, {0: 1.0, 1: 3.0}, {0: 4e7, 1: 1.0}, 2.0, snr={0: 15.0, 1: 15.0})
    assert need[0] == pytest.approx(1e7, rel=1e-12)
    assert need[1] == math.inf  # its compute alone takes longer than the deadline


def test_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        min_max_latency_split(B, {0: 0.0}, {0: 1.0})
    with pytest.raises(ValueError, match="bits"):
        min_max_latency_split(B, {0: 0.0}, {0: -1.0}, snr={0: 1.0})
    with pytest.raises(ValueError, match="zero uplink rate"):
        min_max_latency_split(B, {0: 0.0}, {0: 8.0}, snr_hz={0: 0.0})
    assert min_max_latency_split(B, {}, {}, snr={}) == {}


@pytest.mark.parametrize("snr_hz", [1e4, 1e6, 1e9, 1e12])
@pytest.mark.parametrize("b0", [1.0, 1e3, 1e6, 1.9e7])
def test_white_noise_inversion_recovers_the_bandwidth(snr_hz, b0):
    # bits that take exactly 1 s at b0 Hz: the least bandwidth to send them in 1 s is b0
    bits = b0 * math.log2(1 + snr_hz / b0)
    need = bandwidth_needed(B, {0: 0.0}, {0: bits}, 1.0, snr_hz={0: snr_hz})[0]
    assert need == pytest.approx(b0, rel=1e-9)
    assert need * math.log2(1 + snr_hz / need) >= bits  # on the feasible side
