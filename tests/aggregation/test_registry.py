"""A new aggregation rule is one file: its config class, its aggregator, one register call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest
import torch
from pydantic import Field

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.builtin import AggregationConfig, register_aggregator, registered
from fedintel.config import ConfigError, dump_config, parse_config
from fedintel.experiment import config_hash, run_experiment
from fedintel.types import AdapterState, Update


class ShrunkMeanConfig(AggregationConfig):
    """``aggregation.rule: toy_shrunk_mean``: the plain mean of the deltas, times ``shrink``."""

    rule: Literal["toy_shrunk_mean"] = "toy_shrunk_mean"
    shrink: float = Field(0.5, gt=0, le=1, description="Factor applied to the mean delta.")


class ShrunkMean(Aggregator):
    calls: list[int] = []  # noqa: RUF012 - the test reads which rounds the rule served

    def __init__(self, shrink: float) -> None:
        self.shrink = shrink

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> ShrunkMean:
        return cls(config.shrink)  # type: ignore[attr-defined]

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        ShrunkMean.calls.append(ctx.round_idx if ctx else -1)
        if ctx is not None:
            ctx.stats["toy_clients"] = float(len(updates))
        return {k: self.shrink * torch.stack([u.delta[k] for u in updates]).mean(0) for k in updates[0].delta}


register_aggregator(name="toy_shrunk_mean", config_cls=ShrunkMeanConfig, aggregator_cls=ShrunkMean)


def test_a_registered_rule_validates_its_own_knobs() -> None:
    assert "toy_shrunk_mean" in registered()
    cfg = parse_config({"aggregation": {"rule": "toy_shrunk_mean", "shrink": 0.25}})
    assert isinstance(cfg.aggregation, ShrunkMeanConfig) and cfg.aggregation.shrink == 0.25
    assert "shrink: 0.25" in dump_config(cfg)
    with pytest.raises(ConfigError, match="aggregation.shrink"):
        parse_config({"aggregation": {"rule": "toy_shrunk_mean", "shrink": 2.0}})
    with pytest.raises(ConfigError, match="aggregation.shrink: unknown key for aggregation rule 'fedavg'"):
        parse_config({"aggregation": {"rule": "fedavg", "shrink": 0.25}})
    # --set works on the new rule's knobs as on any other
    over = parse_config({}, ["aggregation.rule=toy_shrunk_mean", "aggregation.shrink=0.75"])
    assert over.aggregation.shrink == 0.75  # type: ignore[attr-defined]


def test_a_toy_rule_runs_from_a_config(tiny_cfg) -> None:
    ShrunkMean.calls.clear()
    cfg = tiny_cfg(aggregation={"rule": "toy_shrunk_mean", "shrink": 0.5}, federation={"rounds": 2})
    res = run_experiment(cfg)
    assert res.status == "finished"
    assert ShrunkMean.calls == [1, 2]  # one aggregation per round, told its round
    assert all(r["toy_clients"] == 3.0 for r in res.rounds if r["round"] > 0)


def test_old_flat_aggregation_sections_still_load_and_hash_the_same() -> None:
    # run directories written before the registries list every rule's knobs at their defaults
    flat = {"rule": "krum", "weighted": True, "trim_beta": 0.1, "num_malicious": 2, "multi_krum_m": None,
            "max_norm": 1.0, "snr_db": 20.0, "power_control": "truncated_inversion", "lora": "naive"}
    old = parse_config({"aggregation": flat})
    new = parse_config({"aggregation": {"rule": "krum", "num_malicious": 2}})
    assert old == new and config_hash(old) == config_hash(new)
