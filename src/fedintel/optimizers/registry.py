"""Federated optimizers by name, each registered together with its config class.

The optimizer section is one more :class:`~fedintel.registry.Registry` (as aggregation rules, schemes and
PEFT methods are): an algorithm module ends with one :func:`register_optimizer` call, and the experiment
file's ``optimizer:`` section validates against the config class registered under its ``name``.
"""

from __future__ import annotations

from typing import Any

from fedintel.optimizers.base import FederatedOptimizer, OptimizerConfig
from fedintel.registry import Registry

OPTIMIZERS: Registry[OptimizerConfig, type[FederatedOptimizer]] = Registry("optimizer", "name", "federated optimizer")


def register_optimizer(*, name: str, config_cls: type[OptimizerConfig],
                       optimizer_cls: type[FederatedOptimizer]) -> None:
    """Make ``optimizer: {name: <name>, ...}`` valid, validated by ``config_cls`` and run by ``optimizer_cls``."""
    OPTIMIZERS.register(name, config_cls, optimizer_cls)
    optimizer_cls.name = name


def registered() -> list[str]:
    """The names ``optimizer.name`` accepts."""
    return OPTIMIZERS.names()


def config_class(name: str) -> type[OptimizerConfig]:
    return OPTIMIZERS.config_class(name)


def parse_optimizer_config(raw: Any) -> OptimizerConfig:
    """Validate an ``optimizer:`` mapping; a ``ValueError`` names the field (``optimizer.beta1: ...``)."""
    return OPTIMIZERS.parse(raw, "fedavg", OptimizerConfig)


def build_optimizer(config: OptimizerConfig) -> FederatedOptimizer:
    """The optimizer object for a validated config."""
    return OPTIMIZERS.impl(config.name)(config)
