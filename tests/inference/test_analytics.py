"""Federated analytics: devices with their own data and classifiers; only probabilities leave them."""

from __future__ import annotations

import pytest
import torch

from fedintel.inference.analytics import AnalyticsError, FederatedClassifier, aggregate, pick_answer
from fedintel.inference.embedding import domain_corpus, write_labelled
from fedintel.inference.launcher import WorkerGroup

DOMAINS = ("coding", "emotion", "humor", "literature", "tech_support", "trivia")


def test_aggregation_rules():
    p1 = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    p2 = torch.tensor([[0.2, 0.8], [0.45, 0.55]])
    p3 = torch.tensor([[0.3, 0.7], [0.9, 0.1]])
    assert aggregate([p1, p2, p3], "vote").tolist() == [1, 1]
    assert aggregate([p1, p2, p3], "mean_probs").tolist() == [1, 0]
    assert aggregate([p1, p2], "weighted_probs", [10.0, 1.0]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([p1], "median")
    assert pick_answer([("Paris", -1.0), ("paris ", -2.0), ("Lyon", -0.1)]) == ("Paris", 0)
    assert pick_answer([("Paris", -1.0), ("Lyon", -0.1)], "score") == ("Lyon", 1)


def test_federated_beats_every_single_device_on_non_iid_data(tmp_path, links):
    rows = domain_corpus(DOMAINS, per_domain=40, seed=1)
    test, train = rows[:60], rows[60:]
    specs = []
    for k in range(3):  # device k sees mostly domains 2k and 2k+1
        mine = [r for r in train if r[1] in (2 * k, 2 * k + 1)][:30]
        others = [r for r in train if r[1] not in (2 * k, 2 * k + 1)][k::12][:4]
        path = write_labelled(tmp_path / f"device{k}.jsonl", [t for t, _ in mine + others], [y for _, y in mine + others])
        specs.append((f"device{k}", ["--role", "classifier", "--model", "minilm-l6", "--train-data", str(path),
                                     "--num-labels", str(len(DOMAINS))]))
    with WorkerGroup(links) as group:
        workers = group.start(specs)
        fed = FederatedClassifier({w.name: group.client(w) for w in workers}, "mean_probs", min_devices=3)
        texts, labels = [t for t, _ in test], [y for _, y in test]
        rep = fed.evaluate(texts, labels)
        assert rep.federated_accuracy > rep.best_single + 0.1, rep
        assert rep.bytes_up == 3 * len(texts) * len(DOMAINS) * 4  # probabilities only
        group.kill(workers[2])
        with pytest.raises(AnalyticsError, match="only 2 of 3 devices answered"):
            fed.evaluate(texts, labels)
        fed.min_devices = 2
        assert len(fed.evaluate(texts, labels).answered) == 2
        fed.close()
