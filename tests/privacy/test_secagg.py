"""Secure aggregation: exact sums, masked updates look like noise, dropout recovery, refusals."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from fedintel.aggregation.fedavg import weighted_mean
from fedintel.privacy.secagg import (
    FIELD_PRIME,
    SecAggClient,
    SecAggError,
    SecAggServer,
    _Random,
    decode_fixed_point,
    encode_fixed_point,
    secure_mean,
    secure_sum,
    shamir_reconstruct,
    shamir_split,
)
from fedintel.types import AdapterState, Update

FRAC_BITS = 32


def make_updates(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> list[Update]:
    g = torch.Generator().manual_seed(seed)
    return [
        Update(
            client_id=i,
            delta={
                "a": torch.randn(2000, generator=g).to(dtype),
                "b": torch.randn(4, 6, generator=g).to(dtype),
            },
            num_samples=5 + 3 * i,
            base_version=0,
            train_loss=0.0,
            steps=1,
            tokens=1,
        )
        for i in range(n)
    ]


def plain_sum(updates: list[Update]) -> AdapterState:
    return {k: sum(u.delta[k].double() for u in updates) for k in updates[0].delta}


def max_err(a: AdapterState, b: AdapterState) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_sum_matches_plain_sum_within_the_quantisation_bound() -> None:
    ups = make_updates(5)
    out = secure_sum(ups, round_idx=3, seed=11)
    assert set(out) == {"a", "b"} and out["b"].shape == (4, 6) and out["a"].dtype == torch.float64
    # each input rounds once to a multiple of 2^-32: error <= n * 2^-33 per coordinate
    assert max_err(out, plain_sum(ups)) <= 5 * 2.0 ** -(FRAC_BITS + 1)


def test_sum_is_exact_for_fixed_point_inputs() -> None:
    # values on the 2^-32 grid are encoded without rounding, so the integer arithmetic makes the sum exact
    g = torch.Generator().manual_seed(1)
    ups = make_updates(4)
    for u in ups:
        for k in u.delta:
            u.delta[k] = torch.randint(-(2**40), 2**40, u.delta[k].shape, generator=g).double() / 2**32
    out = secure_sum(ups, round_idx=0, seed=2)
    assert all(torch.equal(out[k], plain_sum(ups)[k]) for k in out)


def test_float32_updates_come_back_as_float32() -> None:
    ups = make_updates(3, dtype=torch.float32)
    out = secure_sum(ups, round_idx=0, seed=0)
    assert out["a"].dtype == torch.float32
    assert torch.allclose(out["a"], plain_sum(ups)["a"].float(), atol=1e-6)


def run_until_masked(n: int, round_idx: int = 0, t: int = 3):
    ups = make_updates(n)
    ids = [u.client_id for u in ups]
    clients = {i: SecAggClient(i, round_idx, seed=42) for i in ids}
    keys = {i: c.public_key for i, c in clients.items()}
    bundles = [b for c in clients.values() for b in c.make_shares(ids, t).values()]
    for i, c in clients.items():
        c.receive_shares(b for b in bundles if b.holder == i)
    masked = {i: clients[i].masked_update(ups[i].delta, keys) for i in ids}
    return ups, clients, keys, masked


def test_a_masked_update_is_uncorrelated_with_its_input() -> None:
    ups, _, _, masked = run_until_masked(5)
    x = torch.cat([ups[0].delta[k].reshape(-1) for k in sorted(ups[0].delta)]).numpy()
    y = masked[0].words
    # read the masked words back as if they were a fixed-point update: uniform over the whole range
    as_values = y.view(np.int64).astype(np.float64) / 2.0**FRAC_BITS
    corr = np.corrcoef(x, as_values)[0, 1]
    assert abs(corr) < 4 / np.sqrt(x.size)  # ~0: within 4 standard errors of zero correlation
    # and the low byte of each word is uniform (chi-square over 256 bins, 2024 words)
    counts = np.bincount((y & np.uint64(0xFF)).astype(np.int64), minlength=256)
    chi2 = float(((counts - y.size / 256) ** 2 / (y.size / 256)).sum())
    assert chi2 < 350  # 255 degrees of freedom; p ~ 1e-4 at 350
    # while the unmasked encoding is strongly correlated with the input (the test can fail)
    plain = encode_fixed_point(ups[0].delta, FRAC_BITS, 5).view(np.int64).astype(np.float64)
    assert np.corrcoef(x, plain)[0, 1] > 0.999


def test_dropout_of_one_client_recovers_the_survivors_sum() -> None:
    ups, clients, keys, masked = run_until_masked(5, t=3)
    survivors, dropped = [0, 1, 3, 4], [2]  # client 2 shared its secrets, then never uploaded
    reveals = [clients[i].reveal(survivors, dropped) for i in survivors]
    out = SecAggServer(0, 3).unmask([masked[i] for i in survivors], reveals, keys)
    expected = plain_sum([ups[i] for i in survivors])
    assert max_err(out, expected) <= 4 * 2.0 ** -(FRAC_BITS + 1)
    # the same through the in-process helper
    helper = secure_sum([ups[i] for i in survivors], 0, seed=5, dropped_ids=dropped)
    assert max_err(helper, expected) <= 4 * 2.0 ** -(FRAC_BITS + 1)


def test_without_recovery_the_dropped_masks_remain() -> None:
    # summing the survivors' words without removing the dropped client's pairwise masks gives garbage
    ups, _, _, masked = run_until_masked(5)
    with np.errstate(over="ignore"):
        words = sum((masked[i].words for i in [0, 1, 3, 4]), np.zeros_like(masked[0].words))
    garbage = decode_fixed_point(words, FRAC_BITS, masked[0].layout)
    assert max_err(garbage, plain_sum([ups[i] for i in [0, 1, 3, 4]])) > 1e6


def test_tampering_with_one_masked_vector_changes_the_sum() -> None:
    # secure aggregation gives no integrity: a flipped word is not detected, it corrupts the sum
    ups, clients, keys, masked = run_until_masked(4)
    ids = sorted(masked)
    bad = masked[1].words.copy()
    bad[17] ^= np.uint64(1 << 40)
    masked[1] = dataclasses.replace(masked[1], words=bad)
    reveals = [clients[i].reveal(ids, []) for i in ids]
    out = SecAggServer(0, 3).unmask([masked[i] for i in ids], reveals, keys)
    err = (out["a"] - plain_sum(ups)["a"]).abs()
    assert float(err[17]) == pytest.approx(2.0 ** (40 - FRAC_BITS), rel=1e-6)
    assert float(err.sum() - err[17]) < 1e-6  # only the tampered coordinate moved


def test_too_many_dropouts_are_refused() -> None:
    ups = make_updates(5)
    with pytest.raises(SecAggError, match="threshold"):
        secure_sum(ups[:2], 0, seed=0, dropped_ids=[2, 3, 4])  # 2 of 5 survive, majority threshold is 3


def test_clients_never_reveal_both_shares_of_one_peer() -> None:
    _, clients, _, _ = run_until_masked(5)
    clients[0].reveal([0, 1, 2, 3], [4])
    with pytest.raises(SecAggError, match="both"):
        clients[0].reveal([0, 1, 2, 4], [3])  # a server claiming 3 dropped after all would learn x_3
    with pytest.raises(SecAggError, match="both as survivors and as dropped"):
        clients[1].reveal([0, 1, 2], [2])


def test_overflowing_values_are_refused_with_advice() -> None:
    ups = make_updates(3)
    ups[0].delta["a"][0] = 2.0**30
    with pytest.raises(ValueError, match="secagg_frac_bits"):
        secure_sum(ups, 0, seed=0)


def test_single_client_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        secure_sum(make_updates(1), 0, seed=0)


def test_seeded_runs_repeat_and_rounds_differ() -> None:
    ups = make_updates(3)
    _, _, _, m0 = run_until_masked(3, round_idx=0)
    _, _, _, m0b = run_until_masked(3, round_idx=0)
    _, _, _, m1 = run_until_masked(3, round_idx=1)
    assert np.array_equal(m0[0].words, m0b[0].words)
    assert not np.array_equal(m0[0].words, m1[0].words)
    assert torch.equal(secure_sum(ups, 2, seed=9)["a"], secure_sum(ups, 2, seed=9)["a"])
    unseeded = secure_sum(ups, 2)  # OS randomness: different masks, same sum
    assert max_err(unseeded, plain_sum(ups)) <= 3 * 2.0 ** -(FRAC_BITS + 1)


def test_secure_mean_is_fedavg() -> None:
    ups = make_updates(4)
    out = secure_mean(ups, 0, seed=1, dropped_ids=[9])
    ref = weighted_mean([u.delta for u in ups], [u.num_samples for u in ups])
    assert max_err(out, ref) < 1e-9


def test_shamir_any_t_shares_rebuild_and_fewer_do_not() -> None:
    secret = random.Random(0).getrandbits(256)
    shares = shamir_split(secret, [1, 2, 3, 4, 5, 6], threshold=4, rand=_Random(b"seed"))
    assert shamir_reconstruct(shares[:4]) == secret
    assert shamir_reconstruct([shares[5], shares[1], shares[3], shares[0]]) == secret
    assert shamir_reconstruct(shares) == secret
    assert shamir_reconstruct(shares[:3]) != secret  # 3 < t shares interpolate some other value
    assert 0 <= shamir_reconstruct(shares[:3]) < FIELD_PRIME
