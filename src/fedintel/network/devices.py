"""Device compute profiles: how fast a client trains, how much memory it has, what computing costs in energy.

Local training time is the FLOPs the client loop counted (:mod:`fedintel.training.flops`) divided by the
device's sustained FLOP/s. Profiles are drawn per client from the configured distribution, each client from
its own seeded stream, so a client's profile does not depend on how many clients there are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedintel.network.config import DeviceDistribution
from fedintel.network.topology import rng_stream


@dataclass(frozen=True)
class DeviceProfile:
    """What the network model knows about one client device.

    ``flops_per_s`` is sustained training throughput (FLOP/s), ``memory_bytes`` the memory the model may
    use, ``power_w`` the power drawn while computing (W); if ``energy_per_flop_j`` is set, compute energy is
    FLOPs times it instead of power times time.
    """

    flops_per_s: float
    memory_bytes: int
    power_w: float
    energy_per_flop_j: float | None = None

    def compute_time(self, flops: float) -> float:
        """Seconds to execute ``flops`` floating-point operations."""
        if flops < 0 or not math.isfinite(flops):
            raise ValueError(f"flops must be a finite number >= 0, got {flops}")
        return flops / self.flops_per_s

    def compute_energy(self, flops: float) -> float:
        """Joules spent executing ``flops`` FLOPs."""
        if self.energy_per_flop_j is not None:
            return flops * self.energy_per_flop_j
        return self.power_w * self.compute_time(flops)

    def energy_for_time(self, seconds: float) -> float:
        """Joules spent computing for ``seconds`` (used when a client is cut off part-way)."""
        if self.energy_per_flop_j is not None:
            return seconds * self.flops_per_s * self.energy_per_flop_j
        return self.power_w * seconds

    def can_hold(self, model_bytes: int) -> bool:
        """Whether ``model_bytes`` fit in this device's memory."""
        return model_bytes <= self.memory_bytes


def sample_profiles(dist: DeviceDistribution, num_clients: int, seed: int) -> list[DeviceProfile]:
    """One profile per client, drawn from ``dist`` (deterministic in ``seed`` and the client id).

    ``lognormal``: ``flops = mean_flops * exp(spread * Z - spread**2 / 2)`` so the mean is ``mean_flops``;
    ``uniform``: ``mean_flops * U[1 - spread, 1 + spread]``; ``fixed``: ``mean_flops``. Explicit
    ``dist.profiles`` are assigned cyclically (client ``i`` gets ``profiles[i % len(profiles)]``).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if dist.profiles:
        return [
            DeviceProfile(p.flops_per_s, p.memory_bytes, p.power_w, p.energy_per_flop_j)
            for p in (dist.profiles[i % len(dist.profiles)] for i in range(num_clients))
        ]
    out = []
    for i in range(num_clients):
        rng = rng_stream(seed, "device", i)
        if dist.distribution == "fixed":
            flops = dist.mean_flops
        elif dist.distribution == "uniform":
            flops = dist.mean_flops * rng.uniform(1.0 - dist.spread, 1.0 + dist.spread)
        else:
            s = dist.spread
            flops = dist.mean_flops * math.exp(s * rng.standard_normal() - s * s / 2.0)
        out.append(DeviceProfile(float(flops), dist.memory_bytes, dist.power_w, dist.energy_per_flop_j))
    return out


def check_memory(profiles: list[DeviceProfile], model_bytes: int, *, explicit: bool = False) -> None:
    """Raise ``ValueError`` naming the config field if some device cannot hold ``model_bytes``."""
    short = [i for i, p in enumerate(profiles) if not p.can_hold(model_bytes)]
    if not short:
        return
    i = short[0]
    field = "network.devices.profiles[*].memory_bytes" if explicit else "network.devices.memory_bytes"
    raise ValueError(
        f"{field}: client {i} has {profiles[i].memory_bytes / 1e9:.3g} GB but the model needs "
        f"{model_bytes / 1e9:.3g} GB ({len(short)} of {len(profiles)} devices cannot hold it); "
        "raise the memory or use a smaller model"
    )


def flops_array(profiles: list[DeviceProfile]) -> np.ndarray:
    """The FLOP/s of each profile as an array (for vectorised estimates)."""
    return np.array([p.flops_per_s for p in profiles], dtype=float)
