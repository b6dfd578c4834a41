"""fedintel on Flower's Deployment Engine: a ServerApp that runs fedintel's schemes, a ClientApp that
trains on each SuperNode's own shard, and the tooling to deploy them (certificates, shards, processes).

- :mod:`~fedintel.engines.flower.engine`: :class:`FlowerEngine`, the engine the ServerApp hands to the run loop;
- :mod:`~fedintel.engines.flower.server_app` / :mod:`~fedintel.engines.flower.client_app`: the Flower apps;
- :mod:`~fedintel.engines.flower.messages`: how jobs and updates travel as Flower records;
- :mod:`~fedintel.engines.flower.shards`: per-client shard files (``fedintel deploy partition``);
- :mod:`~fedintel.engines.flower.certs`: CA, SuperLink certificate, SuperNode keys (``fedintel deploy certs``);
- :mod:`~fedintel.engines.flower.deploy`: processes (SuperLink, SuperNodes, ``flwr run``), :class:`LocalCluster`;
- :mod:`~fedintel.engines.flower.cli`: ``fedintel deploy ...``.

Nothing here is imported by the rest of fedintel unless ``engine: flower`` is used.
"""
