"""The engine interface: run a batch of client training jobs somewhere, return their updates.

Jobs and failures are :class:`~fedintel.types.TrainJob` and :class:`~fedintel.types.ClientFailure`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from fedintel.types import ClientFailure, TrainJob, Update


class Engine(ABC):
    """Executes client jobs. Schemes call :meth:`train`; the order of results follows the jobs."""

    @abstractmethod
    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        """Run ``jobs`` and return one result per job."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes or connections."""
