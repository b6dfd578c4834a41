"""The aggregator interface and a registry by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from fedintel.types import AdapterState, Update

_REGISTRY: dict[str, Callable[..., Aggregator]] = {}


class Aggregator(ABC):
    """Combines client deltas into one delta. Subclasses override :meth:`aggregate`."""

    name: str = "base"
    last_stats: dict[str, float] = {}
    """Diagnostics of the last call (e.g. clipped fraction), recorded as round metrics."""

    round_dropped: list[int] = []
    """Clients selected this round whose update never arrived (secure aggregation recovers their masks)."""

    def set_round(self, round_idx: int) -> None:  # noqa: B027 - optional hook
        """Tie the next aggregation's randomness (if any) to ``round_idx``, so resumed runs repeat it."""

    @abstractmethod
    def aggregate(self, updates: Sequence[Update], global_state: AdapterState) -> AdapterState:
        """Return the aggregated delta of ``updates`` (never empty)."""


def register(name: str) -> Callable[[type[Aggregator]], type[Aggregator]]:
    """Class decorator: make an aggregator available as ``aggregation.rule: name``."""

    def deco(cls: type[Aggregator]) -> type[Aggregator]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_aggregator(name: str, **kwargs: object) -> Aggregator:
    """Instantiate the aggregator registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown aggregation rule {name!r}; choose from {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def registered() -> list[str]:
    return sorted(_REGISTRY)
