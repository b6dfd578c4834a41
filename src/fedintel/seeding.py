"""Seeds derived from a run's seed: every random choice of a run is a function of (seed, purpose...)."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integer parts, stable across runs and Python versions."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])
