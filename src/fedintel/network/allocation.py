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

_VecRate = Callable[[np.ndarray], np.ndarray]
_INNER_ITERS = 64
_OUTER_ITERS = 200


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


def _rate_function(
    ids: list[int],
    snr_hz: Mapping[int, float] | None,
    snr: Mapping[int, float] | None,
    rate_fn: Callable[[int, float], float] | None,
) -> _VecRate:
    given = sum(x is not None for x in (snr_hz, snr, rate_fn))
    if given != 1:
        raise ValueError("give exactly one of snr_hz, snr or rate_fn")
    if snr_hz is not None:
        s = np.array([float(snr_hz[i]) for i in ids])

        def vec(b: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(b > 0, b * np.log2(1.0 + s / np.where(b > 0, b, 1.0)), 0.0)

        return vec
    if snr is not None:
        eff = np.log2(1.0 + np.array([float(snr[i]) for i in ids]))
        return lambda b: b * eff
    assert rate_fn is not None
    return lambda b: np.array([float(rate_fn(i, float(bi))) for i, bi in zip(ids, b, strict=True)])


def _min_bandwidth(rate: _VecRate, need_bps: np.ndarray, total_hz: float) -> np.ndarray:
    """Least bandwidth giving each client at least ``need_bps`` (0 if need is 0, inf if even ``total_hz`` fails)."""
    n = len(need_bps)
    full = rate(np.full(n, total_hz))
    positive = need_bps > 0
    feasible = np.isfinite(need_bps) & (full >= need_bps)
    lo, hi = np.zeros(n), np.full(n, total_hz)
    for _ in range(_INNER_ITERS):
        mid = 0.5 * (lo + hi)
        ok = rate(mid) >= need_bps
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return np.where(~positive, 0.0, np.where(feasible, hi, math.inf))


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
    rate = _rate_function(ids, snr_hz, snr, rate_fn)
    need = _min_bandwidth(rate, _needs(b, f, finish_by_s), total_hz)
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
    rate = _rate_function(ids, snr_hz, snr, rate_fn)
    n = len(ids)
    eq_rate = rate(np.full(n, total_hz / n))
    with np.errstate(divide="ignore"):
        eq_finish = f + np.where(b > 0, b / np.where(eq_rate > 0, eq_rate, 0.0), 0.0)
    hi = float(np.max(eq_finish))  # the equal split is feasible, so the optimum is no later
    if not math.isfinite(hi):
        bad = ids[int(np.argmax(eq_finish))]
        raise ValueError(f"client {bad} has zero uplink rate; drop it (outage) before allocating")
    lo = float(np.max(f))
    if np.all(b == 0):
        return equal_split(total_hz, ids), lo

    def total_needed(t: float) -> float:
        return float(np.sum(_min_bandwidth(rate, _needs(b, f, t), total_hz)))

    for _ in range(_OUTER_ITERS):
        if hi - lo <= rel_tol * hi:
            break
        mid = 0.5 * (lo + hi)
        if total_needed(mid) <= total_hz:
            hi = mid
        else:
            lo = mid
    shares = _min_bandwidth(rate, _needs(b, f, hi), total_hz)
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
