"""Federated schemes: who trains when, and who aggregates what."""

from fedintel.schemes.base import RoundRecord, Scheme
from fedintel.schemes.fedavg import FedAvgScheme

__all__ = ["FedAvgScheme", "RoundRecord", "Scheme"]
