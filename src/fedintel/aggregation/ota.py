"""Over-the-air (analog) aggregation: clients transmit at once, the channel adds their signals.

Zhu, Wang, Huang, "Broadband Analog Aggregation for Low-Latency Federated Edge Learning", IEEE Trans.
Wireless Commun. 19(1), 2020 (BAA). Who transmits and at what power is :mod:`fedintel.network.aircomp`'s
job (truncated channel inversion under an average or peak power constraint); this module forms the signal
and what the server makes of the received sum.

Client ``k`` of the transmitting set ``S`` sends its delta ``x_k`` (``d`` real entries, one analog symbol
each) as ``s_k = w_k x_k / nu``: ``w_k`` its weight (samples, or 1 with ``weighted: false``) normalised over
``S``, ``nu^2 = max_k w_k^2 mean(x_k^2)`` a common scale (a scalar the server broadcasts) so no symbol stream
exceeds unit mean power. At power ``p_k`` over gain ``g_k`` it arrives with amplitude ``a_k = sqrt(p_k g_k)``;
the server receives ``y = sum_k a_k s_k + z``, ``z ~ N(0, sigma^2)`` per symbol with ``sigma^2 = N0 B`` the
cell's noise over the band, and estimates ``nu y / sum_k a_k w_k``. Under truncated channel inversion every
``a_k = sqrt(rho)``, so the estimate is the weighted mean over ``S`` plus noise of variance
``nu^2 sigma^2 / rho`` per entry (divided by the number of contributing clients when unweighted); with
``power_control: none`` it is a channel-weighted mean. Truncated clients' updates are left out.

``channel: cell`` (default) takes ``g_k``, ``P`` and ``sigma^2`` from the simulated cell of the round
(``RoundContext.channel``: path loss at the client's position, shadowing, fading); it needs
``network.enabled``. ``channel: fixed_snr`` is the abstract model for runs without a network: unit mean
gain, ``|h_k|^2 ~ Exp(1)`` drawn here, ``P / sigma^2 = snr_db``. Noise (and fixed-SNR fading) come from a
stream keyed by (seed, round, clients): deterministic for a seed, fresh every round and group. Signals are
real-valued. Each call records what happened in :attr:`OverTheAir.last_info` and the round's metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.errors import ConfigError
from fedintel.network.aircomp import AnalogPlan, AnalogUplink
from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig

log = logging.getLogger(__name__)

_STREAM = 0x07A  # keeps the rule's draws apart from other streams seeded with the run's seed


class OTAConfig(AggregationConfig):
    """``aggregation.rule: ota``: over-the-air aggregation (BAA), on the cell's channel or at a fixed SNR."""

    rule: Literal["ota"] = "ota"
    channel: Literal["cell", "fixed_snr"] = Field(
        "cell",
        description="cell: gains, transmit power and noise from the simulated network (needs network.enabled); "
        "fixed_snr: Exp(1) fading at snr_db, for runs without a network (network.enabled: false).",
    )
    snr_db: float = Field(20.0, description="channel fixed_snr only: P / sigma^2 in dB at unit channel gain.")
    power_control: Literal["truncated_inversion", "none"] = Field(
        "truncated_inversion",
        description="truncated_inversion: p_k = rho / g_k so signals arrive aligned (BAA); none: full power, "
        "phase correction only (a channel-weighted mean).",
    )
    power_constraint: Literal["average", "peak"] = Field(
        "average",
        description="truncated_inversion: 'average' sets rho so the participants' mean transmit power is "
        "network.tx_power_dbm (BAA); 'peak' so no client exceeds it.",
    )
    truncation: Literal["snr", "gain", "fraction", "none"] = Field(
        "snr",
        description="Who stays silent this round: 'snr' (full-power receive SNR below min_snr_db), 'gain' "
        "(|h_k|^2 below gain_threshold_db), 'fraction' (the weakest truncation_fraction of the participants), "
        "'none'.",
    )
    min_snr_db: float = Field(0.0, description="truncation snr: threshold on P g_k / (N0 B), dB.")
    gain_threshold_db: float = Field(
        -120.0, description="truncation gain: threshold g_th on |h_k|^2 (path loss x shadowing x fading), dB."
    )
    truncation_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="truncation fraction: share of the participants left silent (weakest first)."
    )

    @field_validator("snr_db", "min_snr_db", "gain_threshold_db")
    @classmethod
    def _finite_db(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number of dB, got {v}")
        return v

    @model_validator(mode="after")
    def _knobs_match(self) -> OTAConfig:
        # a knob moved off its default where it has no effect would be silently dropped: refuse it
        # (a knob at its default is what a dumped config.yaml holds, so it passes)
        moved = {f for f in self.model_fields_set if getattr(self, f) != type(self).model_fields[f].default}
        if "snr_db" in moved and self.channel == "cell":
            raise ValueError("aggregation.snr_db applies to aggregation.channel fixed_snr; with channel cell the SNR "
                             "comes from the network (network.tx_power_dbm, network.noise_dbm, the clients' positions)")
        owner = {"min_snr_db": "snr", "gain_threshold_db": "gain", "truncation_fraction": "fraction"}
        for knob, mode in owner.items():
            if knob in moved and self.truncation != mode:
                raise ValueError(f"aggregation.{knob} applies to aggregation.truncation {mode}, not "
                                 f"{self.truncation}; set truncation: {mode} or drop {knob}")
        if "power_constraint" in moved and self.power_control == "none":
            raise ValueError("aggregation.power_constraint applies to aggregation.power_control truncated_inversion; "
                             "with power_control none every client sends at full power")
        return self

    def cross_check(self, cfg: ExperimentConfig) -> None:
        if self.channel == "cell" and not cfg.network.enabled:
            raise ValueError("aggregation.channel cell sums the updates through the simulated cell, which needs "
                             "network.enabled: true; use aggregation.channel fixed_snr for a run without a network")
        if self.channel == "fixed_snr" and cfg.network.enabled:
            raise ValueError("aggregation.channel fixed_snr draws its own fading and ignores the simulated cell of "
                             "network.enabled: true; use channel cell, or set network.enabled: false")
        if cfg.federation.scheme == "async":
            raise ValueError("federation.scheme async uploads one client at a time; aggregation.rule ota needs "
                             "clients transmitting together in one analog slot (use fedavg, clustered or hierarchical)")
        if cfg.output.save_client_updates:
            raise ValueError("output.save_client_updates: with aggregation.rule ota the server only receives the "
                             "analog sum, never an individual update; turn one of them off")

    def analog_uplink(self) -> AnalogUplink:
        return AnalogUplink(
            power_control=self.power_control, power_constraint=self.power_constraint, truncation=self.truncation,
            min_snr_db=self.min_snr_db, gain_threshold_db=self.gain_threshold_db,
            truncation_fraction=self.truncation_fraction,
        )


class OverTheAir(Aggregator):
    """Noisy analog sum of the (weighted) deltas; see the module docstring for the model."""

    def __init__(
        self,
        channel: Literal["cell", "fixed_snr"] = "cell",
        uplink: AnalogUplink | None = None,
        snr_db: float = 20.0,
        seed: int = 0,
        weighted: bool = True,
    ) -> None:
        if channel not in ("cell", "fixed_snr"):
            raise ValueError(f"aggregation.channel must be 'cell' or 'fixed_snr', got {channel!r}")
        if not math.isfinite(snr_db):
            raise ValueError(f"aggregation.snr_db must be a finite number of dB, got {snr_db}")
        self.channel = channel
        self.uplink = uplink if uplink is not None else AnalogUplink()
        self.snr_db = float(snr_db)
        self.seed = int(seed)
        self.weighted = weighted
        self.calls = 0
        """Round of the next call without a RoundContext (a call with one takes the context's round)."""
        self.last_info: dict[str, float] = {}
        self.last_transmitting: list[int] = []
        """Client ids that transmitted in the last call (the others were truncated)."""

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> OverTheAir:
        if not isinstance(config, OTAConfig):
            raise TypeError(f"OverTheAir needs an OTAConfig, got {type(config).__name__}")
        return cls(channel=config.channel, uplink=config.analog_uplink(), snr_db=config.snr_db, seed=seed,
                   weighted=config.weighted)

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        import torch  # here, so parsing a config (fedintel validate) imports no torch

        if not updates:
            raise ValueError("over-the-air aggregation of no updates")
        round_idx = ctx.round_idx if ctx is not None else self.calls
        self.calls = round_idx + 1
        ids = [u.client_id for u in updates]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM, round_idx, *ids]))
        keys = _common_layout(updates)
        x = np.stack([
            torch.cat([u.delta[k].detach().reshape(-1).to(torch.float64) for k in keys]).numpy() for u in updates
        ])
        plan = self._plan(ids, rng, ctx)
        noise = rng.standard_normal(x.shape[1])
        send = plan.transmit
        self.last_transmitting = [ids[i] for i in np.flatnonzero(send)]
        if not send.any():
            log.warning("over-the-air: all %d clients truncated (deep fade); the round's delta is zero", len(ids))
            self._record(plan, 0.0, 0.0, ctx)
            return {k: torch.zeros_like(updates[0].delta[k]) for k in keys}
        w = np.array([float(u.num_samples) if self.weighted else 1.0 for u in updates])[send]
        w = w / w.sum()
        xs = x[send]
        nu = math.sqrt(float(np.max(w**2 * np.mean(xs**2, axis=1))))  # common scale: symbols of mean power <= 1
        a = plan.amplitude[send]
        received = float(np.sum(a * w))
        target = (a * w) @ xs / received
        err_std = nu * math.sqrt(plan.noise_w) / received
        est = target + err_std * noise
        self._record(plan, err_std, float(np.mean(target**2)), ctx)
        out: AdapterState = {}
        offset = 0
        for k in keys:
            ref = updates[0].delta[k]
            n = ref.numel()
            out[k] = torch.from_numpy(est[offset : offset + n].copy()).reshape(ref.shape).to(ref.dtype)
            offset += n
        return out

    def _plan(self, ids: list[int], rng: np.random.Generator, ctx: RoundContext | None) -> AnalogPlan:
        if self.channel == "fixed_snr":
            return self.uplink.plan(rng.exponential(1.0, len(ids)), 1.0, 10.0 ** (-self.snr_db / 10.0))
        ch = ctx.channel if ctx is not None else None
        if ch is None:
            raise ConfigError("aggregation.channel cell: over-the-air aggregation sums the updates through the "
                              "round's channel from the simulated network, and none was given (network.enabled "
                              "false?); use aggregation.channel fixed_snr without a network")
        return self.uplink.plan(ch.gain_up[ids], ch.tx_power_w, ch.noise_psd_w_hz * ch.bandwidth_hz)

    def _record(self, plan: AnalogPlan, err_std: float, signal_power: float, ctx: RoundContext | None) -> None:
        num, sent = len(plan.gains), plan.num_transmitting
        self.last_info = {
            "ota_clients": float(num),
            "ota_transmitting": float(sent),
            "ota_truncated": float(num - sent),
            "ota_noise_std": err_std,
            "ota_mse_expected": err_std**2,
            "ota_nmse_expected": err_std**2 / signal_power if signal_power > 0 else 0.0,
            "ota_mean_tx_power_w": float(np.mean(plan.power_w)),
            "ota_max_tx_power_w": float(np.max(plan.power_w)),
        }
        if ctx is not None:
            ctx.stats.update(self.last_info)


def _common_layout(updates: Sequence[Update]) -> list[str]:
    """The delta keys, after checking every update has the same keys and shapes (an analog sum is entrywise)."""
    first = updates[0]
    keys = list(first.delta)
    for u in updates[1:]:
        if list(u.delta) != keys or any(u.delta[k].shape != first.delta[k].shape for k in keys):
            raise ValueError(f"over-the-air aggregation sums updates entry by entry: client {u.client_id}'s delta "
                             f"has other keys or shapes than client {first.client_id}'s (peft.client_ranks?)")
    return keys


register_aggregator(name="ota", config_cls=OTAConfig, aggregator_cls=OverTheAir)
