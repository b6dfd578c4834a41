"""The engine interface: run a batch of client jobs somewhere, return their results.

Two kinds of job, as Flower's ``configure_fit`` and ``configure_evaluate``: :class:`~fedintel.types.TrainJob`
(the client trains and returns an :class:`~fedintel.types.Update`) and :class:`~fedintel.types.EvalJob` (the
client evaluates adapters on its own data and returns an :class:`~fedintel.types.EvalResult`). Whatever reads a
client's data runs where that data lives; a client that cannot answer yields a
:class:`~fedintel.types.ClientFailure`. Every client applies the run's :class:`~fedintel.training.mods.ClientMods`
(its data mods also to the training rows it evaluates on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from fedintel.training.mods import NO_MODS, ClientMods
from fedintel.types import ClientFailure, EvalJob, EvalResult, TrainJob, Update


class Engine(ABC):
    """Executes client jobs. Schemes call :meth:`train` and :meth:`evaluate`; results follow the jobs' order.

    ``mods`` are what its clients do around training (data mods before, update mods after).
    """

    mods: ClientMods = NO_MODS

    @abstractmethod
    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        """Run ``jobs`` and return one result per job."""

    @abstractmethod
    def evaluate(self, jobs: list[EvalJob]) -> list[EvalResult | ClientFailure]:
        """Evaluate ``jobs`` on their clients' data and return one result per job."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes or connections."""
