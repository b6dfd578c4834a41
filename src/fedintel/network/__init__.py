"""The simulated wireless edge network: how long a round takes, what it costs, who drops out.

A base station at the centre of a cell, users dropped at random, path loss + shadowing + Rayleigh fading,
Shannon rates on shared bandwidth (or one over-the-air slot), heterogeneous device compute, a simulated clock.
Pure numpy.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "analog_slot_s": "aircomp",
    "AnalogPlan": "aircomp",
    "AnalogUplink": "aircomp",
    "ChannelState": "channel",
    "ClientJob": "simulator",
    "ClientTiming": "simulator",
    "DeviceDistribution": "config",
    "DeviceProfile": "devices",
    "DeviceProfileSpec": "config",
    "equal_split": "allocation",
    "Event": "clock",
    "EventQueue": "clock",
    "min_max_latency": "allocation",
    "min_max_latency_split": "allocation",
    "NetworkConfig": "config",
    "path_loss_db": "channel",
    "PathLossConfig": "config",
    "RoundTiming": "simulator",
    "shannon_rate_bps": "channel",
    "SimClock": "clock",
    "summarize_round": "report",
    "WirelessNetwork": "simulator",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
