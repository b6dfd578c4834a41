import torch

from fedintel.aggregation.base import RoundContext
from fedintel.aggregation.fedavg import FedAvg
from fedintel.aggregation.lora_exact import ExactLoRA, MeasuredNaiveLoRA, lora_errors
from fedintel.models.lora_rank import truncate_rank
from fedintel.types import Update


def _update(cid, a, b, n=1, prefix="m", leaf="w"):
    return Update(cid, {f"{prefix}.lora_A.{leaf}": a, f"{prefix}.lora_B.{leaf}": b}, n, 0, 0.0, 1, 1)


def test_exact_reproduces_the_mean_product_when_the_rank_allows():
    g = {"m.lora_A.w": torch.zeros(2, 3, dtype=torch.float64), "m.lora_B.w": torch.zeros(4, 2, dtype=torch.float64)}
    a1, b1 = torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=torch.float64), torch.tensor([[1.0, 0], [0, 0], [0, 0], [2, 0]], dtype=torch.float64)
    a2, b2 = torch.tensor([[0, 1.0, 0], [0, 0, 0]], dtype=torch.float64), torch.tensor([[0, 0], [3.0, 0], [0, 0], [0, 0]], dtype=torch.float64)
    ups = [_update(0, a1, b1), _update(1, a2, b2)]
    agg, ctx = ExactLoRA(), RoundContext()
    delta = agg.aggregate(ups, g, ctx)
    prod = (delta["m.lora_B.w"] @ delta["m.lora_A.w"])
    torch.testing.assert_close(prod, 0.5 * (b1 @ a1 + b2 @ a2))
    assert ctx.stats["lora_exact_error"] < 1e-12
    # the naive average mean(B) @ mean(A) mixes the clients' factors: a large error
    naive = FedAvg().aggregate(ups, g)
    assert torch.linalg.norm(naive["m.lora_B.w"] @ naive["m.lora_A.w"] - prod) > 0.5
    assert ctx.stats["lora_naive_error"] > 0.5


def test_truncation_error_is_reported_when_rank_is_too_small():
    torch.manual_seed(0)
    g = {"x.lora_A.y": torch.zeros(1, 5), "x.lora_B.y": torch.zeros(5, 1)}
    ups = [_update(i, torch.randn(1, 5), torch.randn(5, 1), prefix="x", leaf="y") for i in range(3)]
    ctx = RoundContext()
    ExactLoRA().aggregate(ups, g, ctx)
    assert 0 < ctx.stats["lora_exact_error"] < ctx.stats["lora_naive_error"]


def test_heterogeneous_ranks_zero_padding_and_measured_naive():
    s = {"x.lora_A.y": torch.ones(4, 3), "x.lora_B.y": torch.ones(2, 4), "head": torch.ones(2)}
    t = truncate_rank(s, 2)
    assert t["x.lora_A.y"][2:].abs().sum() == 0 and t["x.lora_B.y"][:, 2:].abs().sum() == 0
    assert t["head"] is s["head"] and s["x.lora_A.y"].sum() == 12  # input untouched
    m = MeasuredNaiveLoRA(FedAvg())
    g = {k: torch.zeros_like(v) for k, v in s.items()}
    ctx = RoundContext()
    m.aggregate([Update(0, s, 1, 0, 0.0, 1, 1), Update(1, t, 1, 0, 0.0, 1, 1)], g, ctx)
    assert ctx.stats["lora_naive_error"] > 0
    assert lora_errors([Update(0, s, 1, 0, 0.0, 1, 1)], g, [1.0])["lora_naive_error"] == 0
