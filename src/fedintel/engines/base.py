"""The engine interface: run a batch of client training jobs somewhere, return their updates."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from fedintel.seeding import derive_seed
from fedintel.types import AdapterState, Update


@dataclass
class TrainJob:
    """Train ``client_id`` starting from ``state`` (global version ``version``) in round ``round_idx``."""

    client_id: int
    state: AdapterState
    version: int
    round_idx: int
    salt: int = 0
    """Distinguishes repeated jobs of one client in one round (asynchronous scheme)."""
    extras: dict[str, AdapterState] = field(default_factory=dict)
    """Tensors a federated optimizer sends with the adapter (SCAFFOLD's control variates)."""

    def seed(self, run_seed: int) -> int:
        """The seed of this job's batch order and dropout: a function of (run seed, round, client)."""
        parts = (run_seed, self.round_idx, self.client_id, 7) + ((self.salt,) if self.salt else ())
        return derive_seed(*parts)


@dataclass
class ClientFailure:
    """A client that crashed, timed out or could not train; the round goes on without it."""

    client_id: int
    reason: str
    kind: str = "failed"
    """The event recorded for it: ``failed`` (crash, timeout, bad reply), ``diverged`` (NaN/Inf loss) or
    ``rejected`` (implausible self-reported values)."""


class Engine(ABC):
    """Executes client jobs. Schemes call :meth:`train`; the order of results follows the jobs."""

    @abstractmethod
    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        """Run ``jobs`` and return one result per job."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes or connections."""
