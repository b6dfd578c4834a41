"""How client updates are combined: one small module per rule, each registered with its config class.

An aggregator takes the accepted :class:`~fedintel.types.Update` objects of a round (their ``delta``
tensors) and returns one aggregated delta; the scheme adds it to the global adapter. A rule module ends with
one :func:`register_aggregator` call; ``aggregation: {rule: <name>, <knobs>}`` then validates against its
config class.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "AggregationConfig": "builtin",
    "Aggregator": "base",
    "build_rule": "builtin",
    "FedAvg": "fedavg",
    "get_aggregator": "builtin",
    "parse_aggregation_config": "builtin",
    "register_aggregator": "builtin",
    "registered": "builtin",
    "RoundContext": "base",
    "UpdateRejected": "validate",
    "validate_update": "validate",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
