"""The simulated clock: an event queue ordered by simulated time, and a clock that only moves forward.

Events at the same time come out in the order they were pushed, so runs are deterministic. The
synchronous scheme reads a round's events from :class:`~fedintel.network.simulator.RoundTiming`; the
asynchronous scheme pushes each client's ``upload_done`` here and consumes them in time order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DOWNLOAD_DONE = "download_done"
COMPUTE_DONE = "compute_done"
UPLOAD_DONE = "upload_done"
CLIENT_DROPPED = "client_dropped"
AGGREGATION_DONE = "aggregation_done"


@dataclass(frozen=True, order=True)
class Event:
    """Something that happens at simulated time ``time_s`` (seconds); ``seq`` breaks ties by push order."""

    time_s: float
    seq: int
    kind: str = field(compare=False)
    payload: Any = field(default=None, compare=False)


class EventQueue:
    """A min-heap of :class:`Event` by ``(time_s, push order)``."""

    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._counter = itertools.count()

    def push(self, time_s: float, kind: str, payload: Any = None) -> Event:
        """Schedule ``kind`` at ``time_s`` seconds; returns the event."""
        if not math.isfinite(time_s):
            raise ValueError(f"event {kind!r} needs a finite time, got {time_s}")
        ev = Event(float(time_s), next(self._counter), kind, payload)
        heapq.heappush(self._heap, ev)
        return ev

    def pop(self) -> Event:
        """Remove and return the earliest event (``IndexError`` if empty)."""
        if not self._heap:
            raise IndexError("pop from an empty event queue")
        return heapq.heappop(self._heap)

    def peek(self) -> Event | None:
        """The earliest event without removing it, or ``None``."""
        return self._heap[0] if self._heap else None

    def remove_if(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Remove and return (in time order) every event for which ``predicate(event)`` is true."""
        gone = sorted(e for e in self._heap if predicate(e))
        if gone:
            self._heap = [e for e in self._heap if not predicate(e)]
            heapq.heapify(self._heap)
        return gone

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)


class SimClock:
    """Simulated wall time in seconds; moving it backwards is an error."""

    def __init__(self, start_s: float = 0.0) -> None:
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ValueError(f"clock start must be a finite time >= 0 s, got {start_s}")
        self._now = float(start_s)

    @property
    def now_s(self) -> float:
        """Current simulated time in seconds."""
        return self._now

    def advance_to(self, time_s: float) -> float:
        """Move to ``time_s`` (>= now); returns the new time."""
        if not math.isfinite(time_s):
            raise ValueError(f"cannot move the clock to {time_s}")
        if time_s < self._now:
            raise ValueError(f"the clock cannot go back from {self._now:.6g} s to {time_s:.6g} s")
        self._now = float(time_s)
        return self._now

    def advance_by(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError(f"the clock cannot go back by {seconds} s")
        return self.advance_to(self._now + seconds)
