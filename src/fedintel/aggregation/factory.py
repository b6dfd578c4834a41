"""Build the aggregator an experiment file asks for: its registered rule, or exact LoRA aggregation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedintel.aggregation.base import Aggregator
from fedintel.aggregation.config import build_rule
from fedintel.aggregation.lora_exact import ExactLoRA, MeasuredNaiveLoRA

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig


def build_aggregator(cfg: ExperimentConfig) -> Aggregator:
    """The aggregation rule of ``cfg``; privacy wrappers are applied by :mod:`fedintel.trust`."""
    a = cfg.aggregation
    if a.lora == "exact":
        return ExactLoRA(weighted=a.weighted)
    rule = build_rule(a, cfg.federation.seed)
    return MeasuredNaiveLoRA(rule) if cfg.peft.method == "lora" and a.rule == "fedavg" else rule
