"""Where clients execute: in this process (``local``, the default) or on Flower's deployment engine."""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "Engine": "base",
    "LocalEngine": "local",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
