"""Client selection policies: who takes part in a round, given estimated round times.

``random``: ``k`` clients uniformly without replacement (McMahan et al. 2017). ``fastest_k``: the ``k``
with the shortest estimated download + compute + upload. ``deadline``: in the spirit of FedCS (Nishio &
Yonetani, "Client Selection for Federated Learning with Heterogeneous Resources in Mobile Edge", ICC
2019), only clients estimated to finish within the deadline are eligible, and ``k`` are drawn at random
among them (fewer, possibly none, if fewer are eligible). Every policy returns sorted client ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

POLICIES = ("random", "fastest_k", "deadline")


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"cannot select {k} clients")


def select_random(candidates: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """``min(k, len(candidates))`` clients drawn uniformly without replacement."""
    _check_k(k)
    pool = sorted(int(c) for c in candidates)
    k = min(k, len(pool))
    if k == 0:
        return []
    picked = rng.choice(len(pool), size=k, replace=False)
    return sorted(pool[int(i)] for i in picked)


def select_fastest(times_s: Mapping[int, float], k: int) -> list[int]:
    """The ``k`` clients with the smallest estimated time (ties broken by id); infinite times never."""
    _check_k(k)
    finite = sorted((t, int(c)) for c, t in times_s.items() if math.isfinite(t))
    return sorted(c for _, c in finite[:k])


def select_by_deadline(
    times_s: Mapping[int, float], k: int, deadline_s: float, rng: np.random.Generator
) -> list[int]:
    """Up to ``k`` clients drawn at random among those whose estimated time is within ``deadline_s``."""
    _check_k(k)
    eligible = [int(c) for c, t in times_s.items() if t <= deadline_s]
    if len(eligible) < k:
        log.warning(
            "deadline selection: only %d of %d candidates can finish within %.3g s",
            len(eligible),
            len(times_s),
            deadline_s,
        )
    return select_random(eligible, k, rng)
