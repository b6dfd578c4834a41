"""Where clients execute: in this process (``local``, the default) or on Flower's deployment engine."""

from fedintel.engines.base import ClientFailure, Engine, TrainJob
from fedintel.engines.local import LocalEngine

__all__ = ["ClientFailure", "Engine", "LocalEngine", "TrainJob"]
