"""Configuration of the simulated wireless edge network (the ``network:`` section of an experiment).

Defaults follow Section V of the paper: one base station at the centre of a 100 m cell, 8 users dropped
uniformly at random, 20 MHz of bandwidth, 23 dBm user transmit power, -80 dBm of noise over the band.
Every model forbids unknown keys and every error names the field and says why.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedintel.sections import Section

MAX_POWER_DBM = 60.0
"""Largest transmit power accepted (60 dBm = 1 kW); anything above is surely a unit mistake."""
MIN_POWER_DBM = -60.0
"""Smallest transmit power accepted (-60 dBm = 1 nW)."""


def _check_dbm(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite power in dBm, got {value}")
    if value > MAX_POWER_DBM:
        raise ValueError(
            f"{name} is in dBm (23 dBm = 200 mW); {value} dBm exceeds {MAX_POWER_DBM:g} dBm (1 kW), "
            "which is surely a unit mistake (watts given as dBm?)"
        )
    if value < MIN_POWER_DBM:
        raise ValueError(f"{name} is in dBm; {value} dBm is below {MIN_POWER_DBM:g} dBm (1 nW)")
    return value


def _check_watts(value: float, name: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} is a power in watts and must be > 0 (and finite), got {value}")
    return value


class PathLossConfig(Section):
    """Large-scale path loss as a function of the link distance ``d``."""

    model: Literal["3gpp", "log_distance"] = Field(
        "3gpp",
        description="'3gpp': PL = intercept_db + slope_db * log10(d / 1 km) (3GPP TR 36.814 macro cell, "
        "128.1 + 37.6 log10(d[km]) dB at 2 GHz); 'log_distance': "
        "PL = ref_loss_db + 10 * exponent * log10(d / ref_distance_m).",
    )
    intercept_db: float = Field(128.1, description="Loss at 1 km in dB (model=3gpp).")
    slope_db: float = Field(37.6, gt=0, description="dB per decade of distance in km (model=3gpp).")
    exponent: float = Field(3.0, gt=0, description="Path-loss exponent (model=log_distance).")
    ref_distance_m: float = Field(1.0, gt=0, description="Reference distance in metres (model=log_distance).")
    ref_loss_db: float = Field(
        38.46,
        description="Loss at ref_distance_m in dB (model=log_distance); default: free space at 1 m, 2 GHz.",
    )


class DeviceProfileSpec(Section):
    """One explicit device profile (overrides the distribution; profiles are assigned to clients cyclically)."""

    flops_per_s: float = Field(gt=0, description="Sustained training throughput in FLOP/s.")
    memory_bytes: int = Field(gt=0, description="Memory available for the model in bytes.")
    power_w: float = Field(5.0, description="Power drawn while computing, in watts (> 0).")
    energy_per_flop_j: float | None = Field(
        None, gt=0, description="Joules per FLOP; if set, compute energy = FLOPs x this (power_w ignored)."
    )

    @field_validator("power_w")
    @classmethod
    def _positive_power(cls, v: float) -> float:
        return _check_watts(v, "power_w")


class DeviceDistribution(Section):
    """How device compute profiles are drawn (seeded), so some devices are stragglers."""

    distribution: Literal["fixed", "uniform", "lognormal"] = Field(
        "lognormal",
        description="Law of each device's FLOP/s: 'fixed' (all = mean_flops), 'uniform' on "
        "mean_flops x [1 - spread, 1 + spread], 'lognormal' with mean mean_flops and log-std spread.",
    )
    mean_flops: float = Field(
        50e9, gt=0, description="Mean sustained throughput in FLOP/s (phone-class NPU/GPU)."
    )
    spread: float = Field(
        0.5, ge=0, description="Relative half-width (uniform, must be < 1) or std of ln(FLOP/s) (lognormal)."
    )
    memory_bytes: int = Field(
        6_000_000_000, gt=0, description="Memory of each device in bytes (default 6 GB)."
    )
    power_w: float = Field(5.0, description="Power drawn while computing, in watts (> 0).")
    energy_per_flop_j: float | None = Field(
        None, gt=0, description="Joules per FLOP; if set, compute energy = FLOPs x this (power_w ignored)."
    )
    profiles: list[DeviceProfileSpec] | None = Field(
        None, description="Explicit profiles, assigned to clients cyclically; overrides the distribution."
    )

    @field_validator("power_w")
    @classmethod
    def _positive_power(cls, v: float) -> float:
        return _check_watts(v, "power_w")

    @model_validator(mode="after")
    def _check_spread(self) -> DeviceDistribution:
        if self.distribution == "uniform" and self.spread >= 1:
            raise ValueError(
                f"network.devices.spread must be < 1 for distribution 'uniform' (FLOP/s would reach 0 or "
                f"below), got {self.spread}"
            )
        if self.profiles is not None and not self.profiles:
            raise ValueError("network.devices.profiles must hold at least one profile (or be null)")
        return self


class NetworkConfig(Section):
    """The cell, its channels, device profiles, and the scheduling policies of the simulated network."""

    enabled: bool = Field(True, description="Simulate time, bytes and energy on the wireless network.")
    cell_radius_m: float = Field(100.0, gt=0, description="Cell radius in metres (paper: 100 m).")
    min_distance_m: float = Field(1.0, gt=0, description="Minimum user-to-station distance in metres.")
    bandwidth_hz: float = Field(
        20e6, description="Total uplink (and downlink) bandwidth in Hz (paper: 20 MHz)."
    )
    tx_power_dbm: float = Field(23.0, description="User transmit power in dBm (paper: 23 dBm = 200 mW).")
    bs_tx_power_dbm: float = Field(43.0, description="Base-station (downlink) transmit power in dBm.")
    noise_dbm: float | None = Field(
        -80.0, description="Noise power in dBm over the whole bandwidth_hz (paper: -80 dBm)."
    )
    noise_psd_dbm_hz: float | None = Field(
        None, description="Alternative: noise power spectral density in dBm/Hz (e.g. -174); wins if set."
    )
    path_loss: PathLossConfig = PathLossConfig()
    shadowing_std_db: float = Field(
        8.0, ge=0, description="Std of log-normal shadowing in dB, redrawn per round."
    )
    fading: Literal["rayleigh", "none"] = Field(
        "rayleigh", description="Small-scale fading, redrawn per round (block fading)."
    )
    min_rate_bps: float = Field(
        1e3, ge=0, description="Links slower than this (bit/s) are in outage: the client is dropped."
    )
    devices: DeviceDistribution = DeviceDistribution()
    allocation: Literal["equal", "min_max_latency"] = Field(
        "equal",
        description="Uplink bandwidth split: 'equal' shares, or 'min_max_latency' (the slowest client "
        "finishes earliest, solved exactly).",
    )
    selection: Literal["random", "fastest_k", "deadline"] = Field(
        "random",
        description="Client selection: uniform 'random', the 'fastest_k' by estimated round time, or "
        "random among those estimated to meet 'deadline' (needs deadline_s).",
    )
    deadline_s: float | None = Field(
        None, gt=0, description="Round deadline in seconds; clients that would finish later are dropped."
    )
    edge_servers: int = Field(
        0, ge=0, description="Edge servers (hierarchical scheme); each client links to the nearest one."
    )
    backhaul_rate_bps: float = Field(
        1e9, gt=0, description="Edge server <-> base station link rate in bit/s."
    )
    backhaul_latency_s: float = Field(0.005, ge=0, description="Edge server <-> base station latency in s.")
    cloud_rate_bps: float = Field(1e9, gt=0, description="Base station <-> cloud link rate in bit/s.")
    cloud_latency_s: float = Field(0.02, ge=0, description="Base station <-> cloud latency in seconds.")
    aggregation_time_s: float = Field(0.0, ge=0, description="Server time to aggregate a round, in seconds.")

    @field_validator("bandwidth_hz")
    @classmethod
    def _positive_bandwidth(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"bandwidth_hz must be > 0 Hz (e.g. 20e6 for 20 MHz), got {v}")
        return v

    @field_validator("tx_power_dbm")
    @classmethod
    def _tx_power(cls, v: float) -> float:
        return _check_dbm(v, "tx_power_dbm")

    @field_validator("bs_tx_power_dbm")
    @classmethod
    def _bs_power(cls, v: float) -> float:
        return _check_dbm(v, "bs_tx_power_dbm")

    @field_validator("noise_dbm", "noise_psd_dbm_hz")
    @classmethod
    def _finite_noise(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"noise must be a finite number in dBm (or dBm/Hz), got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> NetworkConfig:
        if self.min_distance_m >= self.cell_radius_m:
            raise ValueError(
                f"network.min_distance_m ({self.min_distance_m} m) must be smaller than "
                f"network.cell_radius_m ({self.cell_radius_m} m)"
            )
        if self.noise_dbm is None and self.noise_psd_dbm_hz is None:
            raise ValueError("set one of network.noise_dbm (over the band) or network.noise_psd_dbm_hz")
        if (
            self.noise_dbm is not None
            and self.noise_psd_dbm_hz is not None
            and "noise_dbm" in self.model_fields_set
            and "noise_psd_dbm_hz" in self.model_fields_set
        ):
            raise ValueError(
                "set only one of network.noise_dbm (over the band) and network.noise_psd_dbm_hz, not both"
            )
        if self.selection == "deadline" and self.deadline_s is None:
            raise ValueError("network.selection is 'deadline', which requires network.deadline_s (seconds)")
        return self

    @property
    def noise_psd_w_hz(self) -> float:
        """Noise power spectral density in W/Hz (from noise_psd_dbm_hz, else noise_dbm / bandwidth_hz)."""
        if self.noise_psd_dbm_hz is not None:
            return 10 ** ((self.noise_psd_dbm_hz - 30.0) / 10.0)
        assert self.noise_dbm is not None  # guaranteed by the validator
        return 10 ** ((self.noise_dbm - 30.0) / 10.0) / self.bandwidth_hz
