"""The ``aggregation:`` section: the rule's name, the knobs every rule shares, and the registry of rules.

Each rule module registers itself with its own config class (:func:`register_aggregator`), a subclass of
:class:`AggregationConfig` that adds the rule's knobs; ``aggregation: {rule: krum, num_malicious: 2}``
validates against the class registered under ``krum``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedintel.registry import Registry
from fedintel.sections import Section

if TYPE_CHECKING:
    from fedintel.aggregation.base import Aggregator
    from fedintel.config import ExperimentConfig
    from fedintel.network.aircomp import AnalogUplink


class AggregationConfig(Section):
    """How the server combines client deltas; each rule registers a subclass with its own knobs."""

    rule: str = Field("fedavg", description="The aggregation rule (see `fedintel.aggregation.registered()`).")
    weighted: bool = Field(True, description="Weight clients by their sample counts (fedavg, norm_bound, ota).")
    lora: Literal["naive", "exact"] = Field(
        "naive",
        description="naive: average LoRA A and B separately; exact: average the products B@A and "
        "re-factorise to the rank by truncated SVD.",
    )

    def cross_check(self, cfg: ExperimentConfig) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` naming the fields if ``cfg`` combines this rule with what it cannot serve."""

    def analog_uplink(self) -> AnalogUplink | None:
        """How clients transmit when the rule aggregates over the air (the network clock charges one analog slot);
        None for a digital upload."""
        return None


AGGREGATORS: Registry[AggregationConfig, type[Aggregator]] = Registry("aggregation", "rule", "aggregation rule")


def register_aggregator(*, name: str, config_cls: type[AggregationConfig], aggregator_cls: type[Aggregator]) -> None:
    """Make ``aggregation: {rule: <name>, ...}`` valid, validated by ``config_cls``, combined by ``aggregator_cls``.

    ``aggregator_cls.from_config(config, seed)`` builds the rule for a run.
    """
    AGGREGATORS.register(name, config_cls, aggregator_cls)
    aggregator_cls.name = name


def registered() -> list[str]:
    """The names ``aggregation.rule`` accepts."""
    return AGGREGATORS.names()


def parse_aggregation_config(raw: Any) -> AggregationConfig:
    """Validate an ``aggregation:`` mapping against the config class registered under its ``rule``."""
    if isinstance(raw, dict):
        raw = AGGREGATORS.drop_defaults_of_others(raw, str(raw.get("rule", "fedavg")))
    return AGGREGATORS.parse(raw, "fedavg", AggregationConfig)


def get_aggregator(name: str, **kwargs: object) -> Aggregator:
    """Instantiate the aggregation rule registered as ``name`` with keyword arguments."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation rule {name!r}; choose from {AGGREGATORS.names()}")
    return AGGREGATORS.impl(name)(**kwargs)


def build_rule(config: AggregationConfig, seed: int) -> Aggregator:
    """The rule object for a validated ``aggregation`` section."""
    return AGGREGATORS.impl(config.rule).from_config(config, seed)
