"""Attacks: who is malicious, what they send, and the attack config."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fedintel.attacks.config import AttackConfig, malicious_clients
from fedintel.attacks.label_flip import flip_labels
from fedintel.attacks.update import apply_attack, gaussian_noise, scale, sign_flip
from fedintel.types import Update


def upd() -> Update:
    delta = {"a": torch.tensor([1.0, -2.0, 3.0]), "b": torch.ones(2, 2)}
    return Update(client_id=3, delta=delta, num_samples=10, base_version=1, train_loss=0.5, steps=2, tokens=9)


@pytest.mark.parametrize(
    ("n", "fraction", "count"), [(10, 0.1, 1), (10, 0.3, 3), (100, 0.29, 29), (10, 0.25, 3)]
)
def test_malicious_count(n: int, fraction: float, count: int) -> None:
    bad = malicious_clients(n, fraction, seed=0)
    assert len(bad) == count
    assert bad <= set(range(n))


def test_malicious_clients_deterministic_and_seeded() -> None:
    assert malicious_clients(50, 0.2, seed=1) == malicious_clients(50, 0.2, seed=1)
    assert malicious_clients(50, 0.2, seed=1) != malicious_clients(50, 0.2, seed=2)
    assert malicious_clients(4, 0.1, seed=0) != set()  # a requested attack always has an attacker
    assert malicious_clients(10, 0.0, seed=0) == set()


def test_update_attacks_transform_without_mutating() -> None:
    u = upd()
    before = u.delta["a"].clone()
    assert sign_flip(u).delta["a"].tolist() == [-1.0, 2.0, -3.0]
    assert scale(u, 5.0).delta["b"].tolist() == [[5.0, 5.0], [5.0, 5.0]]
    assert torch.equal(u.delta["a"], before)
    flipped = sign_flip(u)
    assert flipped.metrics["malicious"] == 1.0 and "malicious" not in u.metrics
    assert (flipped.client_id, flipped.num_samples, flipped.base_version) == (3, 10, 1)


def test_noise_attack_replaces_delta_reproducibly() -> None:
    u = upd()
    big = Update(0, {"w": torch.zeros(100_000)}, 1, 0, 0.0, 1, 1)
    out = gaussian_noise(big, 2.0, torch.Generator().manual_seed(0)).delta["w"]
    assert float(out.std()) == pytest.approx(2.0, rel=0.02)
    a = gaussian_noise(u, 1.0, torch.Generator().manual_seed(4))
    b = gaussian_noise(u, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a.delta["a"], b.delta["a"]) and a.delta["b"].dtype == torch.float32


def test_apply_attack_dispatch() -> None:
    u = upd()
    assert torch.equal(
        apply_attack(u, AttackConfig(kind="sign_flip", fraction=0.2)).delta["a"], -u.delta["a"]
    )
    assert apply_attack(u, AttackConfig(kind="scale", fraction=0.2, scale=-3)).delta["a"].tolist() == [
        -3,
        6,
        -9,
    ]
    noisy = apply_attack(u, AttackConfig(kind="noise", fraction=0.2, noise_std=0.1, seed=1))
    again = apply_attack(u, AttackConfig(kind="noise", fraction=0.2, noise_std=0.1, seed=1))
    assert torch.equal(noisy.delta["a"], again.delta["a"]) and not torch.equal(noisy.delta["a"], u.delta["a"])
    assert apply_attack(u, AttackConfig(kind="label_flip", fraction=0.2)) is u
    assert apply_attack(u, AttackConfig()) is u


def test_flip_labels_fixed_permutation() -> None:
    assert flip_labels([0, 1, 2, 3], 4).tolist() == [3, 2, 1, 0]
    assert flip_labels(torch.tensor([0, 1, -100]), 2).tolist() == [1, 0, -100]  # ignore index kept


def test_flip_labels_random_always_changes_the_label() -> None:
    y = torch.randint(0, 5, (10_000,), generator=torch.Generator().manual_seed(0))
    flipped = flip_labels(y, 5, torch.Generator().manual_seed(1))
    assert bool((flipped != y).all())
    assert set(flipped.tolist()) == {0, 1, 2, 3, 4}
    counts = torch.bincount(flipped, minlength=5).double()
    assert float(counts.std() / counts.mean()) < 0.05  # spread over the classes, not one target
    assert torch.equal(flipped, flip_labels(y, 5, torch.Generator().manual_seed(1)))


def test_flip_labels_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        flip_labels([0, 5], 3)


def test_attack_config_validation() -> None:
    with pytest.raises(ValidationError, match="fraction"):
        AttackConfig(kind="sign_flip", fraction=1.0)
    with pytest.raises(ValidationError, match="kind"):
        AttackConfig(kind="backdoor")
    with pytest.raises(ValidationError, match="extra"):
        AttackConfig(frac=0.1)
    cfg = AttackConfig(kind="noise", fraction=0.2)
    assert cfg.active and cfg.update_level
    assert not AttackConfig(kind="label_flip", fraction=0.2).update_level
    assert not AttackConfig(kind="sign_flip", fraction=0.0).active
