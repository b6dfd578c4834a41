"""Where fedintel keeps its caches (converted models, prepared corpora, downloads)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDINTEL_CACHE``, else ``~/.cache/fedintel``; created on first use."""
    root = Path(os.environ.get("FEDINTEL_CACHE", Path.home() / ".cache" / "fedintel"))
    root.mkdir(parents=True, exist_ok=True)
    return root
