"""Build the aggregator an experiment file asks for (rule, exact LoRA, differential privacy, secure sum)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedintel.aggregation.base import Aggregator, get_aggregator
from fedintel.aggregation.lora_exact import ExactLoRA, MeasuredNaiveLoRA

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig


def build_aggregator(cfg: ExperimentConfig) -> Aggregator:
    """The aggregation rule of ``cfg``; privacy wrappers are applied by :mod:`fedintel.privacy.wiring`."""
    a = cfg.aggregation
    seed = cfg.federation.seed
    if a.lora == "exact":
        return ExactLoRA(weighted=a.weighted)
    kwargs: dict[str, object] = {
        "fedavg": {"weighted": a.weighted},
        "median": {},
        "trimmed_mean": {"beta": a.trim_beta},
        "krum": {"num_malicious": a.num_malicious},
        "multi_krum": {"num_malicious": a.num_malicious, "m": a.multi_krum_m},
        "norm_bound": {"max_norm": a.max_norm, "weighted": a.weighted},
        "ota": {"snr_db": a.snr_db, "power_control": a.power_control, "seed": seed, "weighted": a.weighted},
    }[a.rule]
    rule = get_aggregator(a.rule, **kwargs)
    return MeasuredNaiveLoRA(rule) if cfg.peft.method == "lora" and a.rule == "fedavg" else rule
