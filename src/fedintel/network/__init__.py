"""The simulated wireless edge network: how long a round takes, what it costs, who drops out.

A base station at the centre of a cell, users dropped at random, path loss + shadowing + Rayleigh fading,
Shannon rates on shared bandwidth, heterogeneous device compute, a simulated clock. Pure numpy.
"""

from fedintel.network.allocation import equal_split, min_max_latency, min_max_latency_split
from fedintel.network.channel import ChannelState, path_loss_db, shannon_rate_bps
from fedintel.network.clock import Event, EventQueue, SimClock
from fedintel.network.config import DeviceDistribution, DeviceProfileSpec, NetworkConfig, PathLossConfig
from fedintel.network.devices import DeviceProfile
from fedintel.network.report import summarize_round
from fedintel.network.simulator import ClientJob, ClientTiming, RoundTiming, WirelessNetwork

__all__ = [
    "ChannelState",
    "ClientJob",
    "ClientTiming",
    "DeviceDistribution",
    "DeviceProfile",
    "DeviceProfileSpec",
    "Event",
    "EventQueue",
    "NetworkConfig",
    "PathLossConfig",
    "RoundTiming",
    "SimClock",
    "WirelessNetwork",
    "equal_split",
    "min_max_latency",
    "min_max_latency_split",
    "path_loss_db",
    "shannon_rate_bps",
    "summarize_round",
]
