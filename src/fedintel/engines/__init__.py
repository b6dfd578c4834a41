"""Where clients execute: in this process (``local``, the default) or on Flower's deployment engine."""

from typing import Any

from fedintel.engines.base import ClientFailure, Engine, TrainJob

__all__ = ["ClientFailure", "Engine", "LocalEngine", "TrainJob"]


def __getattr__(name: str) -> Any:
    # LocalEngine pulls in torch and the training loop; a Flower SuperNode that only answers a lookup
    # message imports this package without needing them, so they load on first use.
    if name == "LocalEngine":
        from fedintel.engines.local import LocalEngine

        return LocalEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
