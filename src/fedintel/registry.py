"""One registry shape for every extension point, after PEFT's ``register_peft_method``.

An extension (an aggregation rule, a scheme, a clustering method, a federated optimizer, a PEFT method)
registers itself in one call together with the config class of its knobs. The experiment file names it in
a *key* field (``aggregation.rule``, ``clustering.method``, ``optimizer.name`` ...); :meth:`Registry.parse`
validates the section against the config class registered under that name, so adding an extension never edits
a central switch, a ``Literal`` or a keyword map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)
T = TypeVar("T")


class Registry(Generic[C, T]):
    """Names of one extension point, each with its config class (a pydantic model) and its implementation.

    ``section`` is where the config lives in the experiment file (``aggregation``), ``key`` the field that
    names the extension (``rule``); every registered config class must default ``key`` to its own name.
    """

    def __init__(self, section: str, key: str, what: str) -> None:
        self.section, self.key, self.what = section, key, what
        self._entries: dict[str, tuple[type[C], T]] = {}

    def register(self, name: str, config_cls: type[C], impl: T) -> None:
        """Make ``<section>: {<key>: name, ...}`` valid, validated by ``config_cls`` and served by ``impl``."""
        if name in self._entries and self._entries[name] != (config_cls, impl):
            raise ValueError(f"{self.what} {name!r} is already registered")
        field = config_cls.model_fields.get(self.key)
        if field is None or field.default != name:
            default = None if field is None else field.default
            raise ValueError(f"{config_cls.__name__}.{self.key} must default to {name!r}, not {default!r}")
        self._entries[name] = (config_cls, impl)

    def names(self) -> list[str]:
        """The names ``<section>.<key>`` accepts, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> tuple[type[C], T]:
        if name not in self._entries:
            raise ValueError(f"{self.section}.{self.key}: unknown {self.what} {name!r}; choose from {self.names()}")
        return self._entries[name]

    def config_class(self, name: str) -> type[C]:
        return self._entry(name)[0]

    def impl(self, name: str) -> T:
        """What was registered with ``name`` (a class, or a factory)."""
        return self._entry(name)[1]

    def all_config_classes(self) -> list[type[C]]:
        return [cls for cls, _ in self._entries.values()]

    def parse(self, raw: Any, default: str, base: type[C]) -> C:
        """Validate a section mapping against the config class registered under its ``key``.

        ``base`` is the common base class (instances of it are re-validated from their dump). Raises
        ``ValueError`` whose message names the field (``aggregation.trim_beta: ...``).
        """
        if isinstance(raw, base):
            raw = raw.model_dump()
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"{self.section}: expected a mapping with a {self.key} (e.g. {{{self.key}: {default}}}), "
                             f"got {raw!r}")
        name = str(raw.get(self.key, default))
        cls = self.config_class(name)
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as err:
            msgs = []
            for e in err.errors():
                loc = ".".join(str(p) for p in e["loc"])
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] == "extra_forbidden":
                    msg = f"unknown key for {self.what} {name!r} (its knobs: " \
                          f"{sorted(f for f in cls.model_fields if f != self.key)})"
                msgs.append(f"{self.section}.{loc}: {msg}" if loc else f"{self.section}: {msg}")
            raise ValueError("; ".join(msgs)) from None

    def drop_defaults_of_others(self, raw: Mapping[str, Any], name: str) -> dict[str, Any]:
        """``raw`` without the knobs of other registered extensions that hold those extensions' defaults.

        Before the registries, a section listed every extension's knobs (run directories' ``config.yaml``
        still do); a knob at its default changes nothing and is dropped, a knob set to anything else for
        an extension that does not use it is kept, so validation refuses it by name.
        """
        own = set(self.config_class(name).model_fields) if name in self else set()
        defaults: dict[str, Any] = {}
        for cls in self.all_config_classes():
            for f, info in cls.model_fields.items():
                if f not in own and not info.is_required():
                    defaults.setdefault(f, info.get_default(call_default_factory=True))
        return {k: v for k, v in raw.items() if k in own or k not in defaults or v != defaults[k]}
