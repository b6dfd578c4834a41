"""Schemes by name (``federation.scheme``), each registered with the config section of its knobs.

A scheme registers in one call: its name, its class, and the config class of its own section
(``clustering:`` for ``clustered``...). The class may be given as ``"module:Class"``: the config validates
``federation.scheme`` against this registry, and the scheme modules import the world, which imports the
config, so the built-in schemes are registered here by reference and imported only when a run builds one
(as Python's entry points do). A scheme defined elsewhere may pass its class itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from fedintel.schemes.cluster_methods import ClusteringConfig
from fedintel.schemes.config import AsyncConfig, HierarchyConfig

if TYPE_CHECKING:
    from fedintel.schemes.base import Scheme


@dataclass(frozen=True)
class SchemeEntry:
    scheme: type[Scheme] | str
    """The scheme class, or ``"module:Class"`` imported when first built."""
    section: str | None = None
    """The experiment file's section holding the scheme's knobs (``clustering``), if any."""
    config_cls: type[BaseModel] | None = None


_SCHEMES: dict[str, SchemeEntry] = {}


def register_scheme(*, name: str, scheme_cls: type[Scheme] | str, section: str | None = None,
                    config_cls: type[BaseModel] | None = None) -> None:
    """Make ``federation.scheme: <name>`` valid, run by ``scheme_cls``, its knobs in ``section`` (``config_cls``)."""
    entry = SchemeEntry(scheme_cls, section, config_cls)
    if name in _SCHEMES and _SCHEMES[name] != entry:
        raise ValueError(f"scheme {name!r} is already registered")
    _SCHEMES[name] = entry


def registered() -> list[str]:
    """The names ``federation.scheme`` accepts."""
    return sorted(_SCHEMES)


def check_scheme_name(name: str) -> str:
    if name not in _SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; choose from {registered()}")
    return name


def scheme_class(name: str) -> type[Scheme]:
    """The class registered as ``name`` (imported on first use when registered by reference)."""
    ref = _SCHEMES[check_scheme_name(name)].scheme
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        cls: type[Scheme] = getattr(importlib.import_module(module), attr)
        cls.name = name
        return cls
    ref.name = name
    return ref


register_scheme(name="fedavg", scheme_cls="fedintel.schemes.synchronous:FedAvgScheme")
register_scheme(name="clustered", scheme_cls="fedintel.schemes.clustered:ClusteredScheme", section="clustering",
                config_cls=ClusteringConfig)
register_scheme(name="hierarchical", scheme_cls="fedintel.schemes.hierarchical:HierarchicalScheme",
                section="hierarchy", config_cls=HierarchyConfig)
register_scheme(name="async", scheme_cls="fedintel.schemes.asynchronous:AsyncScheme", section="async",
                config_cls=AsyncConfig)
