"""The engine interface: run a batch of client training jobs somewhere, return their updates.

Jobs and failures are :class:`~fedintel.types.TrainJob` and :class:`~fedintel.types.ClientFailure`. Every
client applies the run's :class:`~fedintel.training.mods.ClientMods` around its training step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from fedintel.training.mods import NO_MODS, ClientMods
from fedintel.types import ClientFailure, TrainJob, Update


class Engine(ABC):
    """Executes client jobs. Schemes call :meth:`train`; the order of results follows the jobs.

    ``mods`` are what its clients do around training (data mods before, update mods after); a scheme that
    simulates a client-side step in its own process (IFCA's cluster pick) reads the client's data through them.
    """

    mods: ClientMods = NO_MODS

    @abstractmethod
    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        """Run ``jobs`` and return one result per job."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes or connections."""
