import pytest
import torch

from fedintel.aggregation import FedAvg, UpdateRejected, get_aggregator, validate_update
from fedintel.aggregation.fedavg import weighted_mean
from fedintel.types import Update


def upd(cid, values, n, version=0):
    return Update(client_id=cid, delta={"a": torch.tensor(values, dtype=torch.float32)}, num_samples=n,
                  base_version=version, train_loss=1.0, steps=1, tokens=1)


def test_fedavg_is_sample_weighted_mean_computed_by_hand():
    ups = [upd(0, [1.0, 2.0], 1), upd(1, [3.0, 6.0], 3)]
    out = FedAvg().aggregate(ups, {"a": torch.zeros(2)})
    # (1*1 + 3*3)/4 = 2.5 ; (1*2 + 3*6)/4 = 5.0
    assert torch.allclose(out["a"], torch.tensor([2.5, 5.0]))


def test_unweighted_fedavg_is_plain_mean():
    ups = [upd(0, [1.0], 1), upd(1, [3.0], 99)]
    assert FedAvg(weighted=False).aggregate(ups, {"a": torch.zeros(1)})["a"].item() == pytest.approx(2.0)


def test_weighted_mean_keeps_dtype_and_registry_lookup():
    s = [{"w": torch.ones(2, dtype=torch.float16)}, {"w": torch.zeros(2, dtype=torch.float16)}]
    out = weighted_mean(s, [1, 1])
    assert out["w"].dtype == torch.float16 and torch.allclose(out["w"].float(), torch.full((2,), 0.5))
    assert isinstance(get_aggregator("fedavg"), FedAvg)
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        get_aggregator("nope")


@pytest.mark.parametrize(
    "delta, match",
    [
        ({"a": torch.tensor([float("nan"), 0.0])}, "NaN or Inf"),
        ({"a": torch.tensor([float("inf"), 0.0])}, "NaN or Inf"),
        ({"a": torch.zeros(3)}, "shape"),
        ({"a": torch.zeros(2, dtype=torch.float64)}, "dtype"),
        ({"b": torch.zeros(2)}, "keys differ"),
        ({"a": torch.tensor([300.0, 400.0])}, "norm 500 exceeds"),
    ],
)
def test_bad_updates_are_rejected(delta, match):
    u = Update(client_id=7, delta=delta, num_samples=1, base_version=0, train_loss=0.0, steps=1, tokens=1)
    with pytest.raises(UpdateRejected, match=match):
        validate_update(u, {"a": torch.zeros(2)}, max_norm=100.0)


def test_stale_version_rejected_and_good_update_accepted():
    ref = {"a": torch.zeros(2)}
    validate_update(upd(0, [1.0, 1.0], 5, version=3), ref, expected_version=3)
    with pytest.raises(UpdateRejected, match="version"):
        validate_update(upd(0, [1.0, 1.0], 5, version=2), ref, expected_version=3)
