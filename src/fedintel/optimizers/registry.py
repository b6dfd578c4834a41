"""Federated optimizers by name, each registered together with its config class.

After PEFT's ``register_peft_method(name=..., config_cls=..., model_cls=...)``: an algorithm module ends with
one :func:`register_optimizer` call, and the experiment file's ``optimizer:`` section validates against the
config class registered under its ``name``. Adding an algorithm never edits a central switch.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fedintel.optimizers.base import FederatedOptimizer, OptimizerConfig

_REGISTRY: dict[str, tuple[type[OptimizerConfig], type[FederatedOptimizer]]] = {}


def register_optimizer(*, name: str, config_cls: type[OptimizerConfig],
                       optimizer_cls: type[FederatedOptimizer]) -> None:
    """Make ``optimizer: {name: <name>, ...}`` valid, validated by ``config_cls`` and run by ``optimizer_cls``."""
    if name in _REGISTRY and _REGISTRY[name] != (config_cls, optimizer_cls):
        raise ValueError(f"federated optimizer {name!r} is already registered")
    default = config_cls.model_fields["name"].default
    if default != name:
        raise ValueError(f"{config_cls.__name__}.name must default to {name!r}, not {default!r}")
    optimizer_cls.name = name
    _REGISTRY[name] = (config_cls, optimizer_cls)


def registered() -> list[str]:
    """The names ``optimizer.name`` accepts."""
    return sorted(_REGISTRY)


def config_class(name: str) -> type[OptimizerConfig]:
    if name not in _REGISTRY:
        raise ValueError(f"optimizer.name: unknown federated optimizer {name!r}; choose from {registered()}")
    return _REGISTRY[name][0]


def parse_optimizer_config(raw: Any) -> OptimizerConfig:
    """Validate an ``optimizer:`` mapping against the config class registered under its ``name``.

    Raises ``ValueError`` whose message names the field (``optimizer.beta1: ...``).
    """
    if isinstance(raw, OptimizerConfig):
        raw = raw.model_dump()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"optimizer: expected a mapping with a name (e.g. {{name: fedadam}}), got {raw!r}")
    cls = config_class(str(raw.get("name", "fedavg")))
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = f"unknown key for optimizer {cls.model_fields['name'].default!r} (its knobs: " \
                      f"{sorted(f for f in cls.model_fields if f != 'name')})"
            msgs.append(f"optimizer.{loc}: {msg}" if loc else f"optimizer: {msg}")
        raise ValueError("; ".join(msgs)) from None


def build_optimizer(config: OptimizerConfig) -> FederatedOptimizer:
    """The optimizer object for a validated config."""
    return _REGISTRY[config.name][1](config)
