"""Uplink bandwidth allocation among the clients uploading in a round (FDMA).

``equal``: every client gets ``B / K``. ``min_max_latency``: choose shares ``b_i`` (summing to ``B``) so
that the slowest client, finishing at ``fixed_i + bits_i / rate_i(b_i)``, finishes as early as possible:

    minimise T  subject to  fixed_i + bits_i / rate_i(b_i) <= T,  sum_i b_i <= B.

Each ``rate_i`` is increasing in ``b``, so the least bandwidth ``b_i(T)`` that lets client ``i`` finish by
``T`` is decreasing in ``T``, and ``T`` is feasible iff ``sum_i b_i(T) <= B``. The optimum is found exactly
(to floating-point tolerance) by bisection on ``T``, with an inner bisection on each ``b_i(T)``. This is
the structure of the latency-minimising allocations in e.g. Chen et al., "A Joint Learning and
Communications Framework for Federated Learning over Wireless Networks", IEEE TWC 2021.

Rates are given one of three ways: ``snr_hz`` (``P g / N0`` in Hz, white noise of PSD ``N0`` so the SNR
falls as the share grows: ``rate = b log2(1 + snr_hz / b)``), ``snr`` (an SNR independent of the share:
``rate = b log2(1 + snr)``), or any increasing ``rate_fn(client, bandwidth_hz) -> bit/s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.special import lambertw

_INNER_ITERS = 64
_OUTER_ITERS = 200
_LN2 = math.log(2.0)


def equal_split(total_hz: float, clients: Sequence[int]) -> dict[int, float]:
    """``total_hz / len(clients)`` Hz for each client (``{}`` for no clients)."""
    _check_total(total_hz)
    if not clients:
        return {}
    share = total_hz / len(clients)
    return {int(c): share for c in clients}


def _check_total(total_hz: float) -> None:
    if not (total_hz > 0 and math.isfinite(total_hz)):
        raise ValueError(f"network.bandwidth_hz must be > 0 Hz to allocate, got {total_hz}")


class _Rates:
    """Vectorised rates of the clients (in id order) and the least bandwidth reaching a given rate."""

    def rate(self, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def min_bandwidth(self, need_bps: np.ndarray, total_hz: float) -> np.ndarray:
        """Least bandwidth giving each client ``need_bps`` (0 if need is 0, inf if ``total_hz`` is not enough)."""
        n = len(need_bps)
        positive = need_bps > 0
        feasible = np.isfinite(need_bps) & (self.rate(np.full(n, total_hz)) >= need_bps)
        b = self._solve(np.where(positive & feasible, need_bps, 0.0), total_hz)
        return np.where(~positive, 0.0, np.where(feasible, b, math.inf))

    def _solve(self, need: np.ndarray, total_hz: float) -> np.ndarray:
        """Bisection: the feasible end of a bracket shrunk to floating-point resolution."""
        n = len(need)
        lo, hi = np.zeros(n), np.full(n, total_hz)
        for _ in range(_INNER_ITERS):
            mid = 0.5 * (lo + hi)
            ok = self.rate(mid) >= need
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return hi


class _FixedSnr(_Rates):
    """``rate = b log2(1 + snr)``: linear in ``b``, inverted in closed form."""

    def __init__(self, snr: np.ndarray) -> None:
        self.eff = np.log2(1.0 + snr)

    def rate(self, b: np.ndarray) -> np.ndarray:
        return b * self.eff

    def _solve(self, need: np.ndarray, total_hz: float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.where(need > 0, need / self.eff, 0.0)
        return np.minimum(b, total_hz)


class _WhiteNoise(_Rates):
    """``rate = b log2(1 + S / b)`` with ``S = P g / N0`` (Hz): increasing and concave in ``b``.

    Inverted in closed form: with ``u = S / b`` and ``c = need ln 2 / S`` (< 1, the power limit),
    ``ln(1 + u) / u = c`` gives ``1 + u = -W_{-1}(-c e^{-c}) / c`` (Lambert W, lower branch), then
    polished by Newton steps and nudged up to the feasible side.
    """

    def __init__(self, snr_hz: np.ndarray) -> None:
        self.s = snr_hz

    def rate(self, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b > 0, b * np.log2(1.0 + self.s / np.where(b > 0, b, 1.0)), 0.0)

    def _solve(self, need: np.ndarray, total_hz: float) -> np.ndarray:
        active = need > 0
        # an upper bound that is feasible: the spectral efficiency only grows as the share shrinks
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = np.minimum(total_hz, need / np.log2(1.0 + self.s / total_hz))
            c = need * _LN2 / self.s
            v = -lambertw(-c * np.exp(-c), k=-1).real / c
            b = self.s / (v - 1.0)
        b = np.where(active & np.isfinite(b) & (b > 0) & (b <= upper), b, upper)
        for _ in range(3):  # Newton polish (the closed form loses digits near the power limit)
            f = self.rate(b) - need
            with np.errstate(divide="ignore", invalid="ignore"):
                x = self.s / b
                step = b - f / (np.log2(1.0 + x) - x / ((1.0 + x) * _LN2))
            b = np.where(active & np.isfinite(step) & (step > 0) & (step <= upper), step, b)
        for j in range(60):  # step up to the feasible side
            short = active & (self.rate(b) < need)
            if not short.any():
                break
            b = np.where(short, np.minimum(b * (1.0 + 2.0**j * 1e-16), upper), b)
        return np.where(active, np.where(self.rate(b) >= need, b, upper), 0.0)


class _Generic(_Rates):
    """Any increasing ``rate_fn(client, bandwidth_hz)``; inverted by bisection."""

    def __init__(self, ids: list[int], rate_fn: Callable[[int, float], float]) -> None:
        self.ids, self.fn = ids, rate_fn

    def rate(self, b: np.ndarray) -> np.ndarray:
        return np.array([float(self.fn(i, float(bi))) for i, bi in zip(self.ids, b, strict=True)])


def _rate_function(
    ids: list[int],
    snr_hz: Mapping[int, float] | None,
    snr: Mapping[int, float] | None,
    rate_fn: Callable[[int, float], float] | None,
) -> _Rates:
    given = sum(x is not None for x in (snr_hz, snr, rate_fn))
    if given != 1:
        raise ValueError("give exactly one of snr_hz, snr or rate_fn")
    if snr_hz is not None:
        return _WhiteNoise(np.array([float(snr_hz[i]) for i in ids]))
    if snr is not None:
        return _FixedSnr(np.array([float(snr[i]) for i in ids]))
    assert rate_fn is not None
    return _Generic(ids, rate_fn)


def _needs(bits: np.ndarray, fixed: np.ndarray, t: float) -> np.ndarray:
    slack = t - fixed
    with np.errstate(divide="ignore"):
        need = np.where(slack > 0, bits / np.where(slack > 0, slack, 1.0), math.inf)
    return np.where(bits > 0, need, 0.0)


def _arrays(
    fixed_s: Mapping[int, float], bits: Mapping[int, float]
) -> tuple[list[int], np.ndarray, np.ndarray]:
    if set(fixed_s) != set(bits):
        raise ValueError("fixed_s and bits must have the same clients")
    ids = sorted(int(i) for i in bits)
    f = np.array([float(fixed_s[i]) for i in ids])
    b = np.array([float(bits[i]) for i in ids])
    if np.any(b < 0) or not np.all(np.isfinite(b)):
        raise ValueError("bits must be finite and >= 0")
    if np.any(f < 0) or not np.all(np.isfinite(f)):
        raise ValueError("fixed_s (download + compute time) must be finite and >= 0 seconds")
    return ids, f, b


def bandwidth_needed(
    total_hz: float,
    fixed_s: Mapping[int, float],
    bits: Mapping[int, float],
    finish_by_s: float,
    *,
    snr_hz: Mapping[int, float] | None = None,
    snr: Mapping[int, float] | None = None,
    rate_fn: Callable[[int, float], float] | None = None,
) -> dict[int, float]:
    """Least bandwidth (Hz) each client needs to finish by ``finish_by_s`` (relative seconds); inf if none does."""
    _check_total(total_hz)
    ids, f, b = _arrays(fixed_s, bits)
    if not ids:
        return {}
    rates = _rate_function(ids, snr_hz, snr, rate_fn)
    need = rates.min_bandwidth(_needs(b, f, finish_by_s), total_hz)
    return dict(zip(ids, need.tolist(), strict=True))


def min_max_latency(
    total_hz: float,
    fixed_s: Mapping[int, float],
    bits: Mapping[int, float],
    *,
    snr_hz: Mapping[int, float] | None = None,
    snr: Mapping[int, float] | None = None,
    rate_fn: Callable[[int, float], float] | None = None,
    rel_tol: float = 1e-12,
) -> tuple[dict[int, float], float]:
    """The bandwidth shares (Hz, summing to ``total_hz``) minimising the latest finish, and that finish (s).

    ``fixed_s[i]`` is the time client ``i`` spends before uploading (download + compute), ``bits[i]`` its
    upload size in bits; rates come from ``snr_hz``, ``snr`` or ``rate_fn`` (see the module docstring).
    """
    _check_total(total_hz)
    ids, f, b = _arrays(fixed_s, bits)
    if not ids:
        return {}, 0.0
    rates = _rate_function(ids, snr_hz, snr, rate_fn)
    n = len(ids)
    eq_rate = rates.rate(np.full(n, total_hz / n))
    with np.errstate(divide="ignore", invalid="ignore"):
        eq_finish = f + np.where(b > 0, b / np.where(eq_rate > 0, eq_rate, 0.0), 0.0)
    hi = float(np.max(eq_finish))  # the equal split is feasible, so the optimum is no later
    if not math.isfinite(hi):
        bad = ids[int(np.argmax(eq_finish))]
        raise ValueError(f"client {bad} has zero uplink rate; drop it (outage) before allocating")
    lo = float(np.max(f))
    if np.all(b == 0):
        return equal_split(total_hz, ids), lo

    def total_needed(t: float) -> float:
        return float(np.sum(rates.min_bandwidth(_needs(b, f, t), total_hz)))

    for _ in range(_OUTER_ITERS):
        if hi - lo <= rel_tol * hi:
            break
        mid = 0.5 * (lo + hi)
        if total_needed(mid) <= total_hz:
            hi = mid
        else:
            lo = mid
    shares = rates.min_bandwidth(_needs(b, f, hi), total_hz)
    if not np.all(np.isfinite(shares)):  # only from rounding at the equal-split end: fall back to it
        return equal_split(total_hz, ids), hi
    s = float(np.sum(shares))
    shares = shares * (total_hz / s)  # hand out the (tiny) leftover: nobody finishes later
    return dict(zip(ids, shares.tolist(), strict=True)), hi


def min_max_latency_split(
    total_hz: float,
    fixed_s: Mapping[int, float],
    bits: Mapping[int, float],
    *,
    snr_hz: Mapping[int, float] | None = None,
    snr: Mapping[int, float] | None = None,
    rate_fn: Callable[[int, float], float] | None = None,
) -> dict[int, float]:
    """Bandwidth shares (Hz) so the slowest client's download + compute + upload ends earliest.

    See :func:`min_max_latency`, which also returns the optimal round time.
    """
    shares, _ = min_max_latency(total_hz, fixed_s, bits, snr_hz=snr_hz, snr=snr, rate_fn=rate_fn)
    return shares
