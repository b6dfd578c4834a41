"""Robust aggregation rules: hand-computed values and a planted attacker."""

from __future__ import annotations

import pytest
import torch

from fedintel.aggregation import get_aggregator
from fedintel.aggregation.krum import Krum, MultiKrum, krum_scores
from fedintel.aggregation.median import Median
from fedintel.aggregation.norm_bound import NormBound, clip_to_norm
from fedintel.aggregation.trimmed_mean import TrimmedMean
from fedintel.aggregation.validate import update_norm
from fedintel.attacks.update import scale, sign_flip
from fedintel.types import AdapterState, Update


def upd(cid: int, n: int = 10, **tensors: list[float] | torch.Tensor) -> Update:
    delta = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}
    return Update(
        client_id=cid, delta=delta, num_samples=n, base_version=0, train_loss=0.0, steps=1, tokens=1
    )


def dist(a: AdapterState, b: AdapterState) -> float:
    return update_norm({k: a[k].double() - b[k].double() for k in a})


def test_registered_by_name() -> None:
    for name in ("median", "trimmed_mean", "krum", "multi_krum", "norm_bound"):
        assert get_aggregator(name).name == name


def test_median_by_hand() -> None:
    ups = [upd(0, a=[1.0, -5.0]), upd(1, a=[2.0, 7.0]), upd(2, a=[100.0, 0.0])]
    out = Median().aggregate(ups, {})
    assert out["a"].tolist() == [2.0, 0.0]
    assert out["a"].dtype == torch.float32


def test_median_even_count_averages_middle_pair() -> None:
    ups = [upd(i, a=[v]) for i, v in enumerate([1.0, 4.0, 10.0, 1000.0])]
    assert Median().aggregate(ups, {})["a"].tolist() == [7.0]


def test_median_ignores_sample_counts() -> None:
    ups = [upd(0, n=1, a=[1.0]), upd(1, n=1, a=[2.0]), upd(2, n=10_000, a=[100.0])]
    assert Median().aggregate(ups, {})["a"].tolist() == [2.0]


def test_trimmed_mean_by_hand() -> None:
    vals = [[-50.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0], [80.0, 5.0]]
    ups = [upd(i, a=v) for i, v in enumerate(vals)]
    # beta=0.2 of n=5 trims one value at each end: coord 0 keeps {1,2,3}, coord 1 keeps {2,3,4}
    assert TrimmedMean(beta=0.2).aggregate(ups, {})["a"].tolist() == [2.0, 3.0]
    # beta=0.1 trims floor(0.5)=0 values: the plain mean
    assert TrimmedMean(beta=0.1).aggregate(ups, {})["a"].tolist() == pytest.approx([36.0 / 5, 3.0])
    # beta=0.4 trims two at each end: the median
    assert TrimmedMean(beta=0.4).aggregate(ups, {})["a"].tolist() == [2.0, 3.0]


def test_trimmed_mean_rejects_bad_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=0.5)


def test_krum_scores_by_hand() -> None:
    # points 0, 1, 3 on a line and f=0: n - f - 2 = 1 nearest neighbour each
    ups = [upd(i, a=[v]) for i, v in enumerate([0.0, 1.0, 3.0])]
    assert krum_scores([u.delta for u in ups], 0).tolist() == [1.0, 1.0, 4.0]


def test_krum_picks_honest_when_one_of_five_is_an_outlier() -> None:
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05]]
    ups = [upd(i, a=v) for i, v in enumerate(honest)] + [upd(4, a=[1e6, -1e6])]
    out = Krum(num_malicious=1).aggregate(ups, {})
    assert out["a"].tolist() in [pytest.approx(v) for v in honest]
    mk = MultiKrum(num_malicious=1)
    assert 4 not in mk.selected(ups)
    assert len(mk.selected(ups)) == 4
    assert mk.aggregate(ups, {})["a"].tolist() == pytest.approx([1.0, 1.0125])


def test_krum_with_too_few_updates_still_answers(caplog: pytest.LogCaptureFixture) -> None:
    ups = [upd(0, a=[0.0]), upd(1, a=[1.0]), upd(2, a=[50.0])]
    out = Krum(num_malicious=1).aggregate(ups, {})
    assert out["a"].tolist() in ([0.0], [1.0])
    assert "2f + 3" in caplog.text


def test_norm_bound_clips_then_averages() -> None:
    ups = [upd(0, n=1, a=[3.0, 4.0]), upd(1, n=3, a=[0.3, 0.4])]  # norms 5 and 0.5
    out = NormBound(max_norm=1.0).aggregate(ups, {})
    # (1 * [0.6, 0.8] + 3 * [0.3, 0.4]) / 4
    assert out["a"].tolist() == pytest.approx([0.375, 0.5])
    clipped = clip_to_norm({"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}, 1.0)
    assert update_norm(clipped) == pytest.approx(1.0, rel=1e-6)


def honest_world(n: int = 10, dim: int = 50, seed: int = 0) -> tuple[list[Update], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g)
    mu = mu / mu.norm()  # honest direction of unit norm
    ups = [upd(i, a=mu + 0.05 * torch.randn(dim, generator=g)) for i in range(n)]
    return ups, mu


@pytest.mark.parametrize("attack", ["sign_flip", "scale"])
def test_planted_attacker_is_bounded_by_robust_rules_not_by_fedavg(attack: str) -> None:
    ups, _ = honest_world(n=10)
    honest_mean = get_aggregator("fedavg").aggregate(ups, {})
    bad = {2, 7}  # 20% malicious
    poisoned = [
        (sign_flip(scale(u, 10.0)) if attack == "sign_flip" else scale(u, 50.0)) if u.client_id in bad else u
        for u in ups
    ]
    # the natural yardstick: how far the farthest honest client is from the honest mean
    honest_radius = max(dist(u.delta, honest_mean) for u in ups)
    fedavg_err = dist(get_aggregator("fedavg").aggregate(poisoned, {}), honest_mean)
    assert fedavg_err > 5 * honest_radius  # the attackers drag FedAvg far outside the honest cloud
    rules = {
        "median": Median(),
        "trimmed_mean": TrimmedMean(beta=0.2),
        "krum": Krum(num_malicious=2),
        "multi_krum": MultiKrum(num_malicious=2),
    }
    for name, rule in rules.items():
        err = dist(rule.aggregate(poisoned, {}), honest_mean)
        assert err < honest_radius, f"{name}: error {err:.3f}, honest radius {honest_radius:.3f}"
    # norm bounding (equal sample counts): each attacker replaces its honest delta u_a by something of norm
    # <= max_norm, so the mean moves by at most sum_a (max_norm + |u_a|) / n
    max_norm = 1.2
    assert all(update_norm(u.delta) <= max_norm for u in ups)  # honest updates pass unclipped
    nb_bound = sum(max_norm + update_norm(ups[a].delta) for a in bad) / len(ups)
    nb_err = dist(NormBound(max_norm=max_norm).aggregate(poisoned, {}), honest_mean)
    assert nb_err <= nb_bound
    assert nb_err < fedavg_err / 4
