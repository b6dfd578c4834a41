"""Wireless channel: path loss, log-normal shadowing, Rayleigh fading, and Shannon rates.

The power gain of a link is ``10^(-(PL(d) + X) / 10) * |h|^2`` with ``PL`` the configured path loss,
``X ~ N(0, shadowing_std_db^2)`` dB (shared by uplink and downlink) and ``|h|^2 ~ Exp(1)`` (Rayleigh,
independent for uplink and downlink). Shadowing and fading are redrawn every round (block fading) from a
stream keyed by (seed, round), for all clients at once, so a round's channel does not depend on which
clients are asked for.

Noise is white: a client given bandwidth ``b`` sees noise ``N0 * b`` with ``N0`` the noise PSD (from
``noise_psd_dbm_hz``, or ``noise_dbm`` spread over the whole band), so its rate is
``b * log2(1 + P g / (N0 b))`` (Shannon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedintel.network.config import NetworkConfig, PathLossConfig
from fedintel.network.topology import rng_stream


def dbm_to_w(dbm: float | np.ndarray) -> float | np.ndarray:
    """Convert dBm to watts (23 dBm -> 0.1995 W)."""
    w = 10.0 ** ((np.asarray(dbm, dtype=float) - 30.0) / 10.0)
    return float(w) if w.ndim == 0 else w


def w_to_dbm(watts: float) -> float:
    """Convert watts to dBm."""
    return 10.0 * float(np.log10(watts)) + 30.0


def path_loss_db(cfg: PathLossConfig, distance_m: float | np.ndarray) -> float | np.ndarray:
    """Path loss in dB at ``distance_m`` metres.

    ``3gpp``: ``intercept_db + slope_db * log10(d / 1000)`` (128.1 + 37.6 log10(d[km]) by default; 79.18 dB
    at 50 m). ``log_distance``: ``ref_loss_db + 10 * exponent * log10(d / ref_distance_m)``.
    """
    d = np.asarray(distance_m, dtype=float)
    if np.any(d <= 0):
        raise ValueError("path loss needs distances > 0 m")
    if cfg.model == "3gpp":
        pl = cfg.intercept_db + cfg.slope_db * np.log10(d / 1000.0)
    else:
        pl = cfg.ref_loss_db + 10.0 * cfg.exponent * np.log10(d / cfg.ref_distance_m)
    return float(pl) if np.ndim(pl) == 0 else pl


def shannon_rate_bps(
    bandwidth_hz: float | np.ndarray, rx_power_w: float | np.ndarray, noise_psd_w_hz: float
) -> float | np.ndarray:
    """``b * log2(1 + P_rx / (N0 * b))`` in bit/s; 0 for zero bandwidth.

    Increasing and concave in ``b``, bounded by ``P_rx / (N0 ln 2)`` as ``b`` grows (power-limited).
    """
    b = np.asarray(bandwidth_hz, dtype=float)
    p = np.asarray(rx_power_w, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, b * np.log2(1.0 + p / (noise_psd_w_hz * np.where(b > 0, b, 1.0))), 0.0)
    return float(r) if np.ndim(r) == 0 else r


@dataclass(frozen=True)
class ChannelState:
    """The channel of every client in one round (arrays indexed by client id).

    Gains are linear power gains (path loss, shadowing and fading included); powers in W, PSD in W/Hz.
    """

    round_idx: int
    path_loss_db: np.ndarray
    shadowing_db: np.ndarray
    fading_up: np.ndarray
    """``|h|^2`` of the uplink (1 with fading='none')."""
    fading_down: np.ndarray
    gain_up: np.ndarray
    gain_down: np.ndarray
    tx_power_w: float
    bs_tx_power_w: float
    noise_psd_w_hz: float
    bandwidth_hz: float

    @property
    def rx_power_up_w(self) -> np.ndarray:
        """Power received at the station from each client, W."""
        return self.tx_power_w * self.gain_up

    @property
    def rx_power_down_w(self) -> np.ndarray:
        """Power each client receives from the station, W."""
        return self.bs_tx_power_w * self.gain_down

    @property
    def snr_up(self) -> np.ndarray:
        """Uplink SNR (linear) if a client used the whole band."""
        return self.rx_power_up_w / (self.noise_psd_w_hz * self.bandwidth_hz)

    @property
    def snr_down(self) -> np.ndarray:
        """Downlink SNR (linear) over the whole band."""
        return self.rx_power_down_w / (self.noise_psd_w_hz * self.bandwidth_hz)

    @property
    def snr_hz_up(self) -> np.ndarray:
        """``P g / N0`` in Hz: the uplink SNR-bandwidth product, so SNR with share ``b`` is ``snr_hz / b``."""
        return self.rx_power_up_w / self.noise_psd_w_hz

    def uplink_rate(self, client: int, bandwidth_hz: float) -> float:
        """Shannon uplink rate in bit/s of ``client`` given ``bandwidth_hz``."""
        return float(shannon_rate_bps(bandwidth_hz, self.rx_power_up_w[client], self.noise_psd_w_hz))

    def downlink_rate(self, client: int, bandwidth_hz: float | None = None) -> float:
        """Shannon downlink rate in bit/s of ``client`` over ``bandwidth_hz`` (default: the whole band)."""
        b = self.bandwidth_hz if bandwidth_hz is None else bandwidth_hz
        return float(shannon_rate_bps(b, self.rx_power_down_w[client], self.noise_psd_w_hz))


def draw_channel(cfg: NetworkConfig, distances_m: np.ndarray, seed: int, round_idx: int) -> ChannelState:
    """The channel of round ``round_idx`` for clients at link distances ``distances_m`` (metres).

    Deterministic in ``(seed, round_idx)``; all clients are drawn together.
    """
    n = len(distances_m)
    d = np.maximum(np.asarray(distances_m, dtype=float), cfg.min_distance_m)
    pl = np.asarray(path_loss_db(cfg.path_loss, d), dtype=float).reshape(n)
    rng = rng_stream(seed, "channel", round_idx)
    shadow = cfg.shadowing_std_db * rng.standard_normal(n)
    if cfg.fading == "rayleigh":
        fade_up = rng.exponential(1.0, n)
        fade_down = rng.exponential(1.0, n)
    else:
        fade_up = np.ones(n)
        fade_down = np.ones(n)
    large_scale = 10.0 ** (-(pl + shadow) / 10.0)
    return ChannelState(
        round_idx=round_idx,
        path_loss_db=pl,
        shadowing_db=shadow,
        fading_up=fade_up,
        fading_down=fade_down,
        gain_up=large_scale * fade_up,
        gain_down=large_scale * fade_down,
        tx_power_w=float(dbm_to_w(cfg.tx_power_dbm)),
        bs_tx_power_w=float(dbm_to_w(cfg.bs_tx_power_dbm)),
        noise_psd_w_hz=cfg.noise_psd_w_hz,
        bandwidth_hz=cfg.bandwidth_hz,
    )
