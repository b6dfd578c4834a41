"""Federated schemes: who trains when, and who aggregates what.

``fedavg`` (:mod:`~fedintel.schemes.synchronous`, synchronous rounds), ``clustered`` (one adapter per cluster,
grouped by a method of :mod:`~fedintel.schemes.cluster_methods`), ``hierarchical`` (client -> edge -> cloud)
and ``async`` (FedAsync / FedBuff on the simulated clock), registered by name in
:mod:`~fedintel.schemes.registry`. Import the modules directly; this package imports nothing.
"""
