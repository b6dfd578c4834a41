"""Over-the-air (analog) aggregation: clients transmit at once, the channel adds their signals.

Zhu, Wang, Huang, "Broadband Analog Aggregation for Low-Latency Federated Edge Learning", IEEE Trans.
Wireless Commun. 19(1), 2020. Each client ``k`` sends its delta ``x_k`` as analog symbols scaled by
``c_k``; the server receives ``y = sum_k h_k c_k x_k + z`` with ``z ~ N(0, sigma^2)`` per entry.

* ``truncated_inversion`` (the paper's scheme): clients whose channel power gain ``|h_k|^2`` is below
  ``truncation_gain`` stay silent; the others invert their channel, ``c_k = a w_k / h_k``, so the server
  receives ``a * sum_k w_k x_k + z`` and divides by ``a * sum_k w_k``. The common scale ``a`` is the
  largest every transmitter's power budget allows, ``a = min_k sqrt(|h_k|^2 P / (w_k^2 E[x_k^2]))``, so
  weak channels and strong updates make the noise relatively louder; truncation trades dropped clients
  for a larger ``a``.
* ``none``: clients only correct the phase, ``c_k = a w_k``; the server receives
  ``a * sum_k |h_k| w_k x_k + z`` and divides by ``a * sum_k |h_k| w_k``: a channel-weighted mean (biased
  towards good channels) plus noise.

``snr_db`` is ``P / sigma^2``: the receive SNR of one client transmitting at full power over a channel of
unit gain (large-scale loss folded in). Fading ``|h_k|^2 ~ Exp(1)`` (Rayleigh) is drawn afresh on every
call, as is the noise, from ``(seed, call number)``: deterministic for a seed, new draws per round. The
error variance per entry is ``sigma^2 / (a * sum w)^2``, so it shrinks as the SNR grows.
Signals are modelled as real-valued; each call records what happened in :attr:`OverTheAir.last_info`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.types import AdapterState, Update

log = logging.getLogger(__name__)


class OTAConfig(AggregationConfig):
    """``aggregation.rule: ota``."""

    rule: Literal["ota"] = "ota"
    snr_db: float = Field(20.0, description="Receive SNR in dB of the analog over-the-air sum.")
    power_control: Literal["truncated_inversion", "none"] = "truncated_inversion"


class OverTheAir(Aggregator):
    """Noisy analog sum of the (sample-weighted) deltas; see the module docstring for the model."""

    def __init__(
        self,
        snr_db: float = 20.0,
        power_control: Literal["truncated_inversion", "none"] = "truncated_inversion",
        seed: int = 0,
        truncation_gain: float = 0.05,
        weighted: bool = True,
        fading: Literal["rayleigh", "none"] = "rayleigh",
    ) -> None:
        if not math.isfinite(snr_db):
            raise ValueError(f"aggregation.snr_db must be a finite number of dB, got {snr_db}")
        if power_control not in ("truncated_inversion", "none"):
            raise ValueError(
                f"aggregation.power_control must be 'truncated_inversion' or 'none', got {power_control!r}"
            )
        if not (truncation_gain >= 0 and math.isfinite(truncation_gain)):
            raise ValueError(
                f"aggregation.truncation_gain must be >= 0 (a linear power gain), got {truncation_gain}"
            )
        if fading not in ("rayleigh", "none"):
            raise ValueError(f"aggregation.fading must be 'rayleigh' or 'none', got {fading!r}")
        self.snr_db = float(snr_db)
        self.power_control = power_control
        self.seed = int(seed)
        self.truncation_gain = float(truncation_gain)
        self.weighted = weighted
        self.fading = fading
        self.calls = 0
        """Aggregations done so far; the next call draws from stream ``(seed, calls)`` (set it on resume)."""
        self.last_info: dict[str, float] = {}
        self.last_transmitting: list[int] = []
        """Client ids that transmitted in the last call (the others were truncated)."""

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> OverTheAir:
        c = config
        return cls(snr_db=c.snr_db, power_control=c.power_control, seed=seed, weighted=c.weighted)  # type: ignore[attr-defined]

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        import torch

        if not updates:
            raise ValueError("over-the-air aggregation of no updates")
        if ctx is not None:  # the round's stream, so resumed runs repeat it
            self.calls = ctx.round_idx
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.calls]))
        self.calls += 1
        keys = list(updates[0].delta)
        x = np.stack(
            [
                torch.cat([u.delta[k].detach().reshape(-1).to(torch.float64) for k in keys]).numpy()
                for u in updates
            ]
        )
        w = np.array([float(u.num_samples) if self.weighted else 1.0 for u in updates])
        w = w / w.sum()
        num = len(updates)
        h2 = rng.exponential(1.0, num) if self.fading == "rayleigh" else np.ones(num)
        noise = rng.standard_normal(x.shape[1])
        sigma = 10.0 ** (-self.snr_db / 20.0)  # P = 1
        power = np.mean(x**2, axis=1)  # E[x_k^2] per entry

        if self.power_control == "truncated_inversion":
            send = h2 >= self.truncation_gain
            amp = np.ones(num)  # after inversion every transmitter arrives with unit amplitude
            budget = np.where(send & (power > 0), np.sqrt(h2 / np.maximum(w**2 * power, 1e-300)), np.inf)
        else:
            send = np.ones(num, dtype=bool)
            amp = np.sqrt(h2)
            budget = np.where(power > 0, 1.0 / np.sqrt(np.maximum(w**2 * power, 1e-300)), np.inf)

        self.last_transmitting = [updates[i].client_id for i in np.flatnonzero(send)]
        if not send.any():
            log.warning("over-the-air: all %d clients truncated (deep fade); the round's delta is zero", num)
            self._record(num, 0, math.nan, 0.0, ctx)
            return {k: torch.zeros_like(updates[0].delta[k]) for k in keys}
        gain = float((amp[send] * w[send]).sum())
        est = (amp[send] * w[send]) @ x[send] / gain
        a = float(budget[send].min())
        if math.isfinite(a):
            err_std = sigma / (a * gain)
            est = est + err_std * noise
        else:  # every transmitter sends zeros: no power constraint binds, the noise vanishes
            err_std = 0.0
        self._record(num, int(send.sum()), a, err_std, ctx)
        out: AdapterState = {}
        offset = 0
        for k in keys:
            ref = updates[0].delta[k]
            n = ref.numel()
            out[k] = torch.from_numpy(est[offset : offset + n].copy()).reshape(ref.shape).to(ref.dtype)
            offset += n
        return out

    def _record(self, num: int, sent: int, scale: float, err_std: float, ctx: RoundContext | None) -> None:
        self.last_info = {
            "ota_clients": float(num),
            "ota_transmitting": float(sent),
            "ota_truncated": float(num - sent),
            "ota_scale": scale,
            "ota_noise_std": err_std,
            "ota_mse_expected": err_std**2,
        }
        if ctx is not None:
            ctx.stats.update(self.last_info)


register_aggregator(name="ota", config_cls=OTAConfig, aggregator_cls=OverTheAir)
