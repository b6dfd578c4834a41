"""Federated schemes: who trains when, and who aggregates what.

``fedavg`` (synchronous rounds), ``clustered`` (one adapter per cluster), ``hierarchical``
(client -> edge -> cloud) and ``async`` (FedAsync / FedBuff on the simulated clock). Import the scheme
modules directly (``fedintel.schemes.fedavg``...); this package stays import-light because the config
imports its sections from :mod:`fedintel.schemes.config`.
"""
