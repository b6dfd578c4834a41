"""Offline corpora, partitioners and tokenisation."""

from fedintel.data.corpora import BUILTIN_DATASETS, DatasetError
from fedintel.data.federated import ClientData, FederatedData, build_federated_data
from fedintel.data.tokenize import TokenizedSet

__all__ = ["BUILTIN_DATASETS", "ClientData", "DatasetError", "FederatedData", "TokenizedSet", "build_federated_data"]
