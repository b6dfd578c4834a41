"""Over-the-air computation on the uplink: who transmits, at what power, and how long the analog slot lasts.

Zhu, Wang, Huang, "Broadband Analog Aggregation for Low-Latency Federated Edge Learning", IEEE Trans. Wireless
Commun. 19(1), 2020 (BAA). The clients of one aggregation transmit their updates at the same time over the
whole band, one real entry per analog symbol, and the base station receives the sum of their signals plus
noise. The channel power gain ``g_k = |h_k|^2`` is path loss x shadowing x fading (:mod:`channel`).

* **Truncation** (who stays silent this round): ``snr`` drops clients whose receive SNR at full power over the
  band, ``P g_k / (N0 B)``, is below ``min_snr_db`` (a gain threshold ``g_th = 10^(min_snr_db/10) N0 B / P``);
  ``gain`` drops ``g_k < g_th`` with ``g_th`` given in dB (BAA's threshold); ``fraction`` drops the weakest
  ``floor(f N)`` of the ``N`` participants; ``none`` drops nobody.
* **Power control**: ``truncated_inversion`` (BAA) pre-equalises, ``p_k = rho / g_k``, so every signal arrives
  with the same amplitude ``sqrt(rho)``; ``rho`` meets the power constraint with equality: ``average``, the
  mean power over all ``N`` participants (silent ones count 0) is ``P`` (BAA's average-power constraint over
  fading, taken per round), ``rho = N P / sum_k 1/g_k``; ``peak``, no client exceeds ``P``,
  ``rho = P min_k g_k``. ``none``: every transmitter sends at ``P`` and only corrects its phase, so the sum is
  weighted by ``sqrt(P g_k)`` (biased towards good channels).
* **Slot**: ``d`` entries take ``d / B`` seconds at ``B`` real symbols per second over ``B`` Hz, whatever the
  number of clients (:func:`analog_slot_s`). Transmit energy is ``p_k`` x slot time.

Pure numpy; what the aggregator does with the received sum is in :mod:`fedintel.aggregation.ota`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

PowerControl = Literal["truncated_inversion", "none"]
PowerConstraint = Literal["average", "peak"]
Truncation = Literal["snr", "gain", "fraction", "none"]


def analog_slot_s(entries: int, bandwidth_hz: float) -> float:
    """Seconds to send ``entries`` real values as analog symbols over ``bandwidth_hz``: ``entries / bandwidth_hz``."""
    if entries < 0:
        raise ValueError(f"entries must be >= 0, got {entries}")
    if not (bandwidth_hz > 0 and math.isfinite(bandwidth_hz)):
        raise ValueError(f"bandwidth_hz must be > 0 Hz, got {bandwidth_hz}")
    return entries / bandwidth_hz


@dataclass(frozen=True)
class AnalogPlan:
    """One analog slot: which participants transmit and at what power (arrays in participant order)."""

    gains: np.ndarray
    """Channel power gains ``|h_k|^2`` (linear)."""
    transmit: np.ndarray
    """True for the clients that transmit; False for the truncated ones."""
    power_w: np.ndarray
    """Transmit power of each client in W (0 when truncated)."""
    noise_w: float
    """Receiver noise power over the band, W (per real symbol)."""

    @property
    def amplitude(self) -> np.ndarray:
        """Received amplitude of each client's unit-power symbol, ``sqrt(p_k g_k)`` (sqrt(W))."""
        return np.sqrt(self.power_w * self.gains)

    @property
    def num_transmitting(self) -> int:
        return int(self.transmit.sum())


@dataclass(frozen=True)
class AnalogUplink:
    """How clients transmit in an over-the-air slot (``aggregation.rule: ota``'s knobs; see the module docstring)."""

    power_control: PowerControl = "truncated_inversion"
    power_constraint: PowerConstraint = "average"
    truncation: Truncation = "snr"
    min_snr_db: float = 0.0
    gain_threshold_db: float = -120.0
    truncation_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.truncation_fraction < 1.0:
            raise ValueError(f"truncation_fraction must be in [0, 1), got {self.truncation_fraction}")
        if not (math.isfinite(self.min_snr_db) and math.isfinite(self.gain_threshold_db)):
            raise ValueError("min_snr_db and gain_threshold_db must be finite numbers of dB")

    def plan(self, gains: np.ndarray, tx_power_w: float, noise_w: float) -> AnalogPlan:
        """Truncation and power of each participant for channel power gains ``gains`` (linear), transmit power
        ``tx_power_w`` (W) and receiver noise ``noise_w`` (W over the band)."""
        g = np.asarray(gains, dtype=float).reshape(-1)
        if np.any(~np.isfinite(g)) or np.any(g <= 0):
            raise ValueError("channel gains must be finite and > 0")
        if not (tx_power_w > 0 and noise_w > 0):
            raise ValueError(f"tx_power_w and noise_w must be > 0 W, got {tx_power_w}, {noise_w}")
        send = self._survivors(g, tx_power_w, noise_w)
        power = np.zeros_like(g)
        if send.any():
            if self.power_control == "none":
                power[send] = tx_power_w
            elif self.power_constraint == "average":
                rho = len(g) * tx_power_w / float(np.sum(1.0 / g[send]))
                power[send] = rho / g[send]
            else:
                rho = tx_power_w * float(g[send].min())
                power[send] = rho / g[send]
        return AnalogPlan(gains=g, transmit=send, power_w=power, noise_w=float(noise_w))

    def _survivors(self, g: np.ndarray, tx_power_w: float, noise_w: float) -> np.ndarray:
        if self.truncation == "none":
            return np.ones(len(g), dtype=bool)
        if self.truncation == "snr":
            return tx_power_w * g / noise_w >= 10.0 ** (self.min_snr_db / 10.0)
        if self.truncation == "gain":
            return g >= 10.0 ** (self.gain_threshold_db / 10.0)
        cut = int(math.floor(self.truncation_fraction * len(g)))
        send = np.ones(len(g), dtype=bool)
        send[np.argsort(g, kind="stable")[:cut]] = False
        return send
