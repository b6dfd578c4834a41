"""Cell geometry: a base station at the origin, users dropped uniformly in the disc, optional edge servers.

Every random draw of the network model comes from :func:`rng_stream`, keyed by (seed, purpose, indices),
so positions, profiles and fades are reproducible and do not depend on the order of calls.
"""

from __future__ import annotations

import math
import zlib

import numpy as np


def rng_stream(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """An independent generator for ``(seed, purpose, *keys)``, e.g. ``rng_stream(0, "channel", round)``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    entropy = [int(seed), zlib.crc32(purpose.encode())] + [int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def drop_users(num_clients: int, radius_m: float, min_distance_m: float, seed: int) -> np.ndarray:
    """``[num_clients, 2]`` positions in metres, uniform (by area) in the annulus ``min_distance_m <= r <= radius_m``.

    Each client has its own stream, so adding clients does not move the existing ones.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    pos = np.empty((num_clients, 2))
    r2_min, r2_max = min_distance_m**2, radius_m**2
    for i in range(num_clients):
        u, v = rng_stream(seed, "position", i).random(2)
        r = math.sqrt(r2_min + u * (r2_max - r2_min))
        theta = 2.0 * math.pi * v
        pos[i] = (r * math.cos(theta), r * math.sin(theta))
    return pos


def place_edge_servers(count: int, radius_m: float) -> np.ndarray:
    """``[count, 2]`` edge-server positions in metres: one at the centre, or evenly on the ring of radius R/2.

    Deterministic, so a hierarchical run's layout depends only on the users' seed.
    """
    if count < 0:
        raise ValueError(f"network.edge_servers must be >= 0, got {count}")
    if count == 0:
        return np.zeros((0, 2))
    if count == 1:
        return np.zeros((1, 2))
    angles = 2.0 * math.pi * np.arange(count) / count
    return 0.5 * radius_m * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def nearest(points: np.ndarray, sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the index of the nearest site and the distance to it (metres)."""
    d = np.linalg.norm(points[:, None, :] - sites[None, :, :], axis=2)
    idx = np.argmin(d, axis=1)
    return idx, d[np.arange(len(points)), idx]
