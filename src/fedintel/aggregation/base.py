"""The aggregator interface and the context of one aggregation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    from fedintel.aggregation.config import AggregationConfig
    from fedintel.network.channel import ChannelState


@dataclass
class RoundContext:
    """What one aggregation call knows about its round, and what it reports back.

    ``round_idx`` ties the call's randomness (if any) to the round, so resumed runs repeat it; ``dropped``
    lists clients selected this round whose update never arrived (secure aggregation recovers their masks);
    the aggregator writes its diagnostics (e.g. clipped fraction) into ``stats``, recorded as round metrics.
    ``channel`` is the simulated cell's channel of the round (every client's uplink gain, transmit power,
    noise, band), or None without a network; over-the-air aggregation sums the updates through it.
    """

    round_idx: int = 0
    dropped: list[int] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    channel: ChannelState | None = None


class Aggregator(ABC):
    """Combines client deltas into one delta. Subclasses override :meth:`aggregate`."""

    name: str = "base"

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> Aggregator:
        """The rule for a run's validated ``aggregation`` section (``seed``: the run's seed)."""
        return cls()

    @abstractmethod
    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        """Return the aggregated delta of ``updates`` (never empty); ``ctx``: the round (default: round 0)."""
