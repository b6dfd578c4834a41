"""Split a pool of examples across clients: ``iid``, ``dirichlet(alpha)`` over labels, ``by_domain``.

All partitioners return disjoint index lists, one per client, and are deterministic for a seed. Each client
holds exactly ``per_client`` indices, except with :func:`dirichlet_by_class`, whose clients vary in size around
that mean (its total is ``num_clients * per_client``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedintel.errors import FedintelError


class PartitionError(FedintelError, ValueError):
    """The pool cannot be split as asked (too few examples, unknown domain...)."""


def _need(available: int, wanted: int, what: str) -> None:
    if wanted > available:
        raise PartitionError(
            f"data.samples_per_client x federation.num_clients needs {wanted} {what}, "
            f"but only {available} are available"
        )


def iid(pool: Sequence[int], num_clients: int, per_client: int, rng: np.random.Generator) -> list[list[int]]:
    """Uniformly random disjoint shards."""
    _need(len(pool), num_clients * per_client, "examples")
    perm = rng.permutation(np.asarray(pool))
    return [perm[i * per_client : (i + 1) * per_client].tolist() for i in range(num_clients)]


def dirichlet(
    pool: Sequence[int],
    groups: Sequence[object],
    num_clients: int,
    per_client: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Label-skewed shards: client ``k`` draws its classes in proportions ``p_k ~ Dir(alpha)``.

    ``groups[i]`` is the label (or domain) of ``pool[i]``. Small ``alpha`` gives nearly one class per client;
    large ``alpha`` approaches iid. A class that runs dry is refilled from the classes that still have
    examples, so every client gets exactly ``per_client`` examples.
    """
    _need(len(pool), num_clients * per_client, "examples")
    classes = sorted(set(groups), key=str)
    by_class = {c: rng.permutation([p for p, g in zip(pool, groups, strict=True) if g == c]).tolist() for c in classes}
    shards: list[list[int]] = []
    for _ in range(num_clients):
        props = rng.dirichlet([alpha] * len(classes))
        counts = np.floor(props * per_client).astype(int)
        counts[int(np.argmax(props))] += per_client - counts.sum()
        shard: list[int] = []
        deficit = 0
        for c, n in zip(classes, counts, strict=True):
            take = min(n, len(by_class[c]))
            shard += [by_class[c].pop() for _ in range(take)]
            deficit += n - take
        while deficit:
            c = max(classes, key=lambda k: len(by_class[k]))
            shard.append(by_class[c].pop())
            deficit -= 1
        shards.append(shard)
    return shards


def dirichlet_by_class(
    pool: Sequence[int],
    groups: Sequence[object],
    num_clients: int,
    per_client: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    max_draws: int = 100_000,
) -> list[list[int]]:
    """Label-skewed shards as NIID-Bench (Li et al., 2022) and Flower Datasets' ``DirichletPartitioner`` draw
    them: each class spreads over the clients in proportions ``q_c ~ Dir(alpha)``.

    ``num_clients * per_client`` examples are taken first, with every class in its share of the pool, so the
    clients' union keeps the pool's class balance (drawing each client's mix instead, :func:`dirichlet`, leaves
    the union as skewed as a few clients' draws; with 8 clients the global model then learns a prior the
    held-out data does not have). Client sizes vary. Draws in which a client gets fewer than ``min_size``
    examples are redrawn, as both references do.
    """
    total = num_clients * per_client
    _need(len(pool), total, "examples")
    min_size = min(min_size, per_client)
    classes = sorted(set(groups), key=str)
    by_class = {c: rng.permutation([p for p, g in zip(pool, groups, strict=True) if g == c]).tolist() for c in classes}
    # The class counts of the union: the pool's shares, rounded so they add up to ``total``.
    share = np.array([len(by_class[c]) for c in classes], dtype=float) / len(pool) * total
    counts = np.floor(share).astype(int)
    for i in np.argsort(share - counts)[::-1][: total - counts.sum()]:
        counts[i] += 1
    for _ in range(max_draws):
        split = []
        for n in counts:
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * n).astype(int)[:-1]
            split.append(np.diff(np.concatenate([[0], cuts, [n]])))
        sizes = np.sum(split, axis=0)
        if sizes.min() >= min_size:
            break
    else:
        raise PartitionError(
            f"data.partition: no Dirichlet({alpha}) split over classes gave every client {min_size} examples in "
            f"{max_draws} draws; raise data.partition.alpha or data.samples_per_client, or lower federation.num_clients"
        )
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    for c, per_client_counts in zip(classes, split, strict=True):
        for k, n in enumerate(per_client_counts):
            shards[k] += [by_class[c].pop() for _ in range(int(n))]
    return [rng.permutation(s).tolist() for s in shards]


def by_domain(
    pool: Sequence[int],
    domains: Sequence[str],
    num_clients: int,
    per_client: int,
    rng: np.random.Generator,
) -> tuple[list[list[int]], list[str]]:
    """Each client draws from one domain; clients are spread round-robin over the sorted domains.

    Returns the shards and each client's domain (the ground truth for clustering).
    """
    names = sorted(set(domains))
    assignment = [names[i % len(names)] for i in range(num_clients)]
    by_dom = {d: rng.permutation([p for p, g in zip(pool, domains, strict=True) if g == d]).tolist() for d in names}
    shards = []
    for d in assignment:
        if len(by_dom[d]) < per_client:
            raise PartitionError(
                f"data.partition: domain {d!r} has {len(by_dom[d])} examples left, "
                f"a client needs data.samples_per_client={per_client}"
            )
        shards.append([by_dom[d].pop() for _ in range(per_client)])
    return shards, assignment
