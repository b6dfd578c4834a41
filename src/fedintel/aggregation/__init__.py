"""How client updates are combined: one small module per rule.

An aggregator takes the accepted :class:`~fedintel.types.Update` objects of a round (their ``delta``
tensors) and returns one aggregated delta; the scheme adds it to the global adapter.
"""

# Importing the rule modules registers them by name (``aggregation.rule`` in the experiment file).
from fedintel.aggregation import krum, lora_exact, median, norm_bound, ota, trimmed_mean  # noqa: F401
from fedintel.aggregation.base import Aggregator, get_aggregator, register, registered
from fedintel.aggregation.fedavg import FedAvg
from fedintel.aggregation.validate import UpdateRejected, validate_update

__all__ = ["Aggregator", "FedAvg", "UpdateRejected", "get_aggregator", "register", "registered", "validate_update"]
