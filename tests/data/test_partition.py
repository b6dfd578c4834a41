import numpy as np
import pytest

from fedintel.data import partition


def test_iid_sizes_disjoint_deterministic():
    pool = list(range(100))
    a = partition.iid(pool, 5, 12, np.random.default_rng(1))
    b = partition.iid(pool, 5, 12, np.random.default_rng(1))
    c = partition.iid(pool, 5, 12, np.random.default_rng(2))
    assert a == b and a != c
    assert [len(s) for s in a] == [12] * 5
    flat = [i for s in a for i in s]
    assert len(set(flat)) == 60


def test_iid_too_few_examples_names_fields():
    with pytest.raises(partition.PartitionError, match="samples_per_client x federation.num_clients"):
        partition.iid(list(range(10)), 4, 3, np.random.default_rng(0))


def test_dirichlet_small_alpha_skews_labels_and_stays_disjoint():
    pool = list(range(400))
    labels = [i % 4 for i in pool]
    shards = partition.dirichlet(pool, labels, 8, 40, 0.05, np.random.default_rng(0))
    assert all(len(s) == 40 for s in shards)
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))
    top_share = [np.bincount([labels[i] for i in s], minlength=4).max() / 40 for s in shards]
    assert np.mean(top_share) > 0.8  # nearly one label per client
    iidish = partition.dirichlet(pool, labels, 8, 40, 1000.0, np.random.default_rng(0))
    assert np.mean([np.bincount([labels[i] for i in s], minlength=4).max() / 40 for s in iidish]) < 0.45


def test_by_domain_assigns_round_robin_and_only_that_domain():
    pool = list(range(120))
    domains = ["a", "b", "c"] * 40
    shards, assigned = partition.by_domain(pool, domains, 6, 10, np.random.default_rng(0))
    assert assigned == ["a", "b", "c", "a", "b", "c"]
    for s, d in zip(shards, assigned, strict=True):
        assert {domains[i] for i in s} == {d}
    with pytest.raises(partition.PartitionError, match="domain"):
        partition.by_domain(pool, domains, 6, 30, np.random.default_rng(0))
