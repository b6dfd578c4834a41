"""Shared pieces of the real-process Flower tests: the experiment, a cluster fixture body, comparisons."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedintel.config import ExperimentConfig
from fedintel.engines.flower.certs import CertPaths, write_certs
from fedintel.engines.flower.deploy import LocalCluster
from fedintel.engines.flower.shards import write_shards
from fedintel.tracking.store import MetricsStore
from tests.conftest import tiny_config

NUM_NODES = 3


def experiment(tmp_path: Path, per_client: bool = False) -> ExperimentConfig:
    """2 rounds of FL-LoRA on tiny-llama, 3 clients, all sampled every round (one per SuperNode).

    ``per_client``: also evaluate each client's eval split, on its node (an ``evaluate`` message per client at
    rounds 0, 1 and 2: three more message waves; the real-process tests leave it off, the fake-Grid tests in
    test_flower_engine.py run it through the real ClientApp)."""
    return tiny_config(tmp_path, federation={"num_clients": NUM_NODES, "clients_per_round": NUM_NODES},
                       eval={"per_client": per_client})


@contextmanager
def cluster(root: Path, cfg: ExperimentConfig, *, secure: bool, warm: bool) -> Iterator[tuple[LocalCluster, CertPaths | None]]:
    """A SuperLink and one SuperNode per client; every process is stopped afterwards, even on failure."""
    certs = write_certs(root / "certs", nodes=NUM_NODES + 1) if secure else None
    shards = write_shards(cfg, root / "shards")
    cl = LocalCluster(root / "cluster", certs=certs)
    try:
        cl.start_superlink()
        for i in range(NUM_NODES):
            key = None
            if certs is not None:
                cl.register(f"node{i}", certs.node_pub(i))
                key = certs.node_key(i)
            cl.start_supernode(f"node{i}", shards, [i], private_key=key, warm=warm)
        yield cl, certs
    finally:
        cl.stop()
    left = cl.leftovers()
    assert left == [], f"processes of the cluster outlived it: {left}"  # checked when the body succeeded


def run_rounds(run_dir: Path) -> tuple[list[dict[str, float]], list[tuple[int, int | None, str, str]], str]:
    """Per-round metrics, events and status of the run the ServerApp wrote."""
    with MetricsStore(run_dir / "metrics.db") as store:
        run_id = store.run_ids()[0]
        return store.rounds(run_id), store.events(run_id), str(store.run_info(run_id)["status"])


def wait_for_log(path: Path, text: str, timeout: float) -> bool:
    """Poll ``path`` until it contains ``text`` (checked at least once)."""
    end = time.monotonic() + timeout
    while True:
        if path.is_file() and text in path.read_text(errors="replace"):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)


def run_killing_node_when_training(cl: LocalCluster, cfg: ExperimentConfig, run_dir: Path, node: str = "node2",
                                   job_timeout: float = 30.0):  # noqa: ANN201 - the CompletedProcess of the run
    """Run ``cfg`` on ``cl`` and SIGKILL ``node``'s process tree mid-round, once it has received its first
    train job (round 1: after the key set-up under secure aggregation). Asserts the kill happened."""
    victim = cl.procs[node]
    killed = threading.Event()

    def kill_when_training() -> None:
        if wait_for_log(victim.log_path, "Receiving: train message", 300):
            cl.kill_node(node)
            killed.set()

    killer = threading.Thread(target=kill_when_training, daemon=True)
    killer.start()
    res = cl.run(cfg, run_dir, job_timeout=job_timeout, discovery_timeout=120, timeout=400)
    killer.join(timeout=5)
    assert killed.is_set(), f"{node} never received a train job"
    return res
