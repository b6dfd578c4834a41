"""Flower's Deployment Engine for real: a SuperLink and 3 SuperNodes as processes on 127.0.0.1, with TLS and
node authentication (the default outside tests). The run gives the local engine's metrics; unregistered or
plain-HTTP SuperNodes are refused.

The main cluster launches ClientApps with fedintel's warm launcher (a pre-imported process forked per
message); the ``slow`` test repeats the comparison with Flower's own SuperExec (a fresh Python per message,
~3x slower on 2 cores).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedintel.config import dump_config
from fedintel.engines.flower.deploy import DeployError, flower_env, register_node
from fedintel.experiment import run_experiment
from tests.conftest import tiny_config
from tests.engines.flower_helpers import NUM_NODES, cluster, experiment, run_rounds, wait_for_log

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower-secure")
    cfg = experiment(root)
    with cluster(root, cfg, secure=True, warm=True) as (cl, certs):
        yield cl, certs, cfg, root


def test_flower_run_matches_local_engine(secure):
    """Through the documented command: ``fedintel deploy run CONFIG --superlink ... --certs ...``."""
    cl, certs, _, root = secure
    cfg = experiment(root)  # the same shards (per-client evaluation on the nodes: test_flower_engine.py, real ClientApp)
    (root / "exp.yaml").write_text(dump_config(cfg))
    cmd = [sys.executable, "-m", "fedintel.cli", "deploy", "run", str(root / "exp.yaml"), "--superlink", cl.address,
           "--certs", str(certs.root), "--run-dir", str(root / "flower-run"), "--home", str(cl.root / "cli-run"),
           "--job-timeout", "300"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=flower_env(cl.root / "cli-run"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "run directory:" in res.stdout and "eval_loss" in res.stdout  # the summary table
    _check_matches_local(cfg, root)


@pytest.mark.slow
def test_flower_superexec_run_matches_local_engine(tmp_path):
    cfg = experiment(tmp_path)
    with cluster(tmp_path, cfg, secure=True, warm=False) as (cl, _):
        res = cl.run(cfg, tmp_path / "flower-run", job_timeout=300, discovery_timeout=120, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        _check_matches_local(cfg, tmp_path)


def _check_matches_local(cfg, root):
    flower, events, status = run_rounds(root / "flower-run")
    assert status == "finished" and events == []
    local = run_experiment(cfg, root / "local-run").rounds
    assert len(flower) == len(local) == 3  # round 0 (baseline) + 2 rounds
    for lr, fr in zip(local, flower, strict=True):
        assert fr.get("clients_accepted") == lr.get("clients_accepted")
        assert set(fr) == set(lr)
        for k, v in lr.items():
            if k != "wall_s":
                assert fr[k] == pytest.approx(v, rel=1e-5, abs=1e-9), k
    assert flower[1]["clients_accepted"] == NUM_NODES and flower[2]["eval_loss"] < flower[0]["eval_loss"]
    assert ("client_eval_loss" in flower[-1]) is cfg.eval.per_client  # computed on the nodes, equal to the local one


def test_unregistered_key_and_plain_http_nodes_are_refused(secure):
    cl, certs, _, root = secure
    intruder = cl.start_supernode("intruder", root / "shards", [0], private_key=certs.node_key(NUM_NODES),
                                  max_retries=0, max_wait_time=5)
    keyless = cl.start_supernode("keyless", root / "shards", [0], max_retries=0, max_wait_time=5)
    plain = cl.start_supernode("plain", root / "shards", [0], tls=False, max_retries=0, max_wait_time=5)
    for p in (intruder, keyless, plain):
        p.popen.wait(timeout=90)
        assert p.popen.returncode != 0, p.tail()
    assert "Failed to activate SuperNode" in intruder.tail(60)  # TLS fine, key not registered
    assert "must be registered" in keyless.tail(60)  # TLS fine, no key: self-registration is off
    assert "Failed to initialize the connection" in plain.tail(60)  # no TLS against a TLS SuperLink
    for p in (intruder, keyless, plain):
        assert not wait_for_log(p.log_path, "SuperNode ID:", 0.0), f"{p.name} joined the federation"
    # registering needs the CA too: a CLI that does not trust it cannot even reach the Control API
    from fedintel.engines.flower.deploy import write_flwr_config

    stranger_home = root / "stranger"
    write_flwr_config(stranger_home, cl.address, root_cert=None)
    with pytest.raises(DeployError):
        register_node(stranger_home, certs.node_pub(NUM_NODES))


@pytest.mark.slow  # make test-all; in make test the fake-Grid tests (test_flower_engine.py) run every scheme's logic
def test_hierarchical_and_wall_clock_async_run_on_real_supernodes(secure):
    """The other schemes on the same SuperLink: hierarchical equals the local engine; async on the wall
    clock merges the nodes' replies as they arrive (not bit-reproducible, so checked by its invariants)."""
    cl, _, _, root = secure
    three = {"num_clients": NUM_NODES, "clients_per_round": NUM_NODES}  # same shards as the fixture's experiment
    hier = tiny_config(root, federation={**three, "scheme": "hierarchical"}, eval={"per_client": False},
                       hierarchy={"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2})
    res = cl.run(hier, root / "hier-flower", job_timeout=300, discovery_timeout=120, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    flower, events, status = run_rounds(root / "hier-flower")
    local = run_experiment(hier, root / "hier-local").rounds
    assert status == "finished" and events == [] and len(flower) == len(local) == 3
    for key in ("eval_loss", "cum_bytes_cloud", "sim_time_s"):
        assert flower[-1][key] == pytest.approx(local[-1][key], rel=1e-5), key

    wall = tiny_config(root, engine="flower", federation={**three, "scheme": "async"}, network={"enabled": False},
                       eval={"per_client": False}, **{"async": {"clock": "wall", "concurrency": 2, "alpha": 0.6}})
    res = cl.run(wall, root / "async-flower", job_timeout=300, discovery_timeout=120, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rounds, events, status = run_rounds(root / "async-flower")
    assert status == "finished" and len(rounds) == 3
    assert rounds[-1]["version"] == 2 * NUM_NODES  # every arrival merged, none lost
    assert rounds[-1]["wall_clock_s"] > 0 and rounds[-1]["max_staleness"] >= 1  # two jobs overlapped
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
