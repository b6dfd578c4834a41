"""What the ``fedintel deploy`` commands do, as functions: submit a run to a SuperLink, run a whole
deployment on this machine, host a SuperNode with the warm ClientApp launcher.

The command line (:mod:`fedintel.engines.flower.cli`) parses arguments, calls one of these and prints.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedintel.config import ExperimentConfig
from fedintel.engines.flower.certs import CertPaths, write_certs
from fedintel.engines.flower.deploy import (
    LocalCluster,
    flwr_run,
    write_app,
    write_flwr_config,
    write_run_config,
)
from fedintel.engines.flower.shards import write_shards
from fedintel.processes import start_process


def submit_run(cfg: ExperimentConfig, superlink: str, certs: CertPaths | None, home: Path, run_dir: Path, *,
               resume: bool = False, job_timeout: float | None = None, discovery_timeout: float | None = None) -> int:
    """Run ``cfg`` on the federation behind ``superlink`` (``flwr run --stream``, output on the console) and
    return ``flwr``'s exit status; ``home`` is the flwr CLI's ``FLWR_HOME``, ``run_dir`` where the ServerApp
    writes the run."""
    write_flwr_config(home, superlink, certs.ca_cert if certs else None)
    app_dir = write_app(home / "app")
    rc = write_run_config(home / "run-config.toml", cfg, run_dir, resume=resume, job_timeout=job_timeout,
                          discovery_timeout=discovery_timeout)
    return flwr_run(home, app_dir, rc, capture=False).returncode


@dataclass
class LocalDeployment:
    """What :func:`run_local` started: the SuperLink's address, whether links were TLS with node
    authentication, the clients each SuperNode hosted, and where the logs are."""

    address: str
    secure: bool
    hosts: list[list[int]]
    logs: Path


def run_local(cfg: ExperimentConfig, root: Path, run_dir: Path, *, nodes: int | None = None, insecure: bool = False,
              cache_dir: str | None = None, threads: int | None = 1, warm: bool = True,
              job_timeout: float | None = None, discovery_timeout: float | None = None,
              on_ready: Callable[[LocalDeployment], None] | None = None) -> int:
    """Certificates (unless ``insecure``), shards, a SuperLink and ``nodes`` SuperNodes (default one per
    client; client c on node c mod N) under ``root``; run ``cfg`` across them, stop every process, and return
    ``flwr``'s exit status. ``on_ready`` hears about the deployment once every process is up."""
    n = nodes or cfg.federation.num_clients
    certs = None if insecure else write_certs(root / "certs", nodes=n)
    shards = write_shards(cfg, root / "shards")
    hosts = [[c for c in range(cfg.federation.num_clients) if c % n == i] for i in range(n)]
    with LocalCluster(root / "cluster", certs=certs) as cluster:
        cluster.start_superlink()
        for i, clients in enumerate(hosts):
            key = None
            if certs is not None:
                cluster.register(f"node{i}", certs.node_pub(i))
                key = certs.node_key(i)
            cluster.start_supernode(f"node{i}", shards, clients, private_key=key, cache_dir=cache_dir,
                                    threads=threads, warm=warm)
        if on_ready:
            on_ready(LocalDeployment(cluster.address, certs is not None, hosts, cluster.root))
        res = cluster.run(cfg, run_dir, job_timeout=job_timeout, discovery_timeout=discovery_timeout, capture=False)
    return res.returncode


def run_warm_supernode(cmd: list[str], env: dict[str, str], runtime_port: int) -> int:
    """Run the SuperNode ``cmd`` as a child (its output on the console) and the warm ClientApp launcher in
    this process until either ends; then stop the SuperNode. Returns the launcher's exit status."""
    from fedintel.engines.flower import warm

    os.environ.update(env)
    node = start_process("supernode", cmd, env, None, own_session=False)
    try:
        return warm.main(["--runtime-api-address", f"127.0.0.1:{runtime_port}", "--parent-pid", str(node.pid)])
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        node.stop(grace=0.0)


def warm_model(name: str, cache_dir: str | None) -> None:
    """Build the node's on-disk model cache for base model ``name`` now, so the first round does not pay for it."""
    if cache_dir:
        os.environ["FEDINTEL_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    from fedintel.config import ModelConfig
    from fedintel.models.loader import load_base_model

    load_base_model(ModelConfig(name=name))
