"""Start, stop and drive Flower's Deployment Engine for fedintel: SuperLink, SuperNodes, ``flwr run``.

Every process gets its own ``FLWR_HOME``, telemetry and update checks off, and runtime dependency
installation disabled (the SuperLink would otherwise ``uv sync`` the app and pull a CUDA torch). Processes
are started in their own session, so stopping one stops its children (SuperExec, ClientApp processes).

Secure by default: the SuperLink serves TLS with the certificates of ``fedintel deploy certs`` and accepts
only SuperNodes whose public key was registered (``--enable-supernode-auth`` +
``flwr supernode register``). ``secure=False`` (``--insecure`` on the command line) is for tests only.

:class:`LocalCluster` runs a whole deployment on one machine (tests, the benchmark and
``fedintel deploy local``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedintel.config import ExperimentConfig
from fedintel.engines.flower.certs import CertPaths
from fedintel.processes import (
    ManagedProcess,
    ProcessError,
    describe,
    free_port,
    kill_pids,
    pids_with_env,
    processes_with_env,
    start_process,
)
from fedintel.processes import wait_for_port as _wait_for_port

log = logging.getLogger(__name__)

CONNECTION = "fedintel"
"""Name of the SuperLink connection fedintel writes into ``$FLWR_HOME/config.toml``."""
APP_NAME = "fedintel-flower"
SERVER_APP = "fedintel.engines.flower.server_app:app"
CLIENT_APP = "fedintel.engines.flower.client_app:app"


class DeployError(ProcessError):
    """A Flower process could not be started or a run failed; the message says where to look."""


def venv_bin() -> Path:
    """Directory of this interpreter's scripts (``flower-superlink``, ``flwr``...)."""
    return Path(sys.executable).parent


def flower_bin(name: str) -> str:
    """Path of a Flower executable next to this interpreter (falls back to ``PATH``)."""
    p = venv_bin() / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found; install fedintel's dependencies (flwr==1.41.*) in this environment")
    return found


def flower_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: its own ``FLWR_HOME``, no telemetry, no runtime installs, offline."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # SuperExec looks for new ServerApp/ClientApp tasks every second by default.
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": env.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra or {})
    home.mkdir(parents=True, exist_ok=True)
    return env


def wait_for_port(host: str, port: int, timeout: float, proc: ManagedProcess | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections (or raise :class:`DeployError`, with the log tail)."""
    _wait_for_port(host, port, timeout, proc, error=DeployError)


# -- commands -----------------------------------------------------------------------------------------
def superlink_command(host: str, port: int, certs: CertPaths | None, auth: bool = True, database: Path | None = None) -> list[str]:
    """``flower-superlink`` arguments: TLS + node auth with ``certs``, plain HTTP (``--insecure``) without."""
    cmd = [flower_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if database is not None:
        cmd += ["--database", str(database)]
    if certs is None:
        return cmd + ["--insecure"]
    certs.check()
    cmd += ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert),
            "--ssl-keyfile", str(certs.server_key)]
    return cmd + (["--enable-supernode-auth"] if auth else [])


def supernode_command(
    superlink: str, runtime_port: int, node_config: dict[str, Any], root_cert: Path | None, private_key: Path | None,
    *, max_retries: int | None = None, max_wait_time: float | None = None, warm: bool = False,
) -> list[str]:
    """``flower-supernode`` arguments; TLS when ``root_cert`` is given, node auth when ``private_key`` is.

    ``warm``: ``--isolation process``, for :mod:`fedintel.engines.flower.warm` to launch the ClientApps.
    """
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--port", str(runtime_port),
           "--node-config", node_config_string(node_config)]
    if warm:
        cmd += ["--isolation", "process"]
    cmd += ["--root-certificates", str(root_cert)] if root_cert is not None else ["--insecure"]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def warm_command(runtime_port: int, supernode_pid: int | None) -> list[str]:
    """The warm ClientApp launcher of a ``--isolation process`` SuperNode (see :mod:`.warm`)."""
    cmd = [sys.executable, "-m", "fedintel.engines.flower.warm", "--runtime-api-address", f"127.0.0.1:{runtime_port}"]
    return cmd + (["--parent-pid", str(supernode_pid)] if supernode_pid else [])


def node_config_string(node_config: dict[str, Any]) -> str:
    """``key="value" key2=3`` as ``--node-config`` expects (strings quoted as TOML strings)."""
    parts = []
    for k, v in node_config.items():
        parts.append(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}")
    return " ".join(parts)


def write_flwr_config(home: Path, address: str, root_cert: Path | None) -> Path:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection named ``fedintel`` (the default)."""
    conn: dict[str, Any] = {"address": address}
    if root_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(Path(root_cert).resolve())
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
    return path


APP_RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "experiment": "",
    "experiment-path": "",
    "run-dir": "",
    "resume": False,
    "job-timeout": 600.0,
    "discovery-timeout": 120.0,
    "poll-interval": 0.05,
}


def write_app(app_dir: Path) -> Path:
    """The Flower app (a ``pyproject.toml`` only: the code is the installed ``fedintel`` package)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "project": {
            "name": APP_NAME, "version": "0.1.0", "license": "Apache-2.0",
            "description": "fedintel's ServerApp and ClientApp for Flower's Deployment Engine",
            # Installed ahead of time on every machine; the SuperLink never installs anything at run time.
            "dependencies": ["flwr==1.41.*"],
        },
        "tool": {"flwr": {"app": {
            "publisher": "fedintel",
            "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
            "config": APP_RUN_CONFIG_DEFAULTS,
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))
    (app_dir / "README.md").write_text("Generated by fedintel: its ServerApp and ClientApp for Flower. Edit nothing here.\n")
    return app_dir


def write_run_config(path: Path, cfg: ExperimentConfig, run_dir: Path | None, *, resume: bool = False,
                     job_timeout: float | None = None, discovery_timeout: float | None = None) -> Path:
    """A TOML file for ``flwr run --run-config``: the experiment as JSON plus engine settings."""
    rc: dict[str, Any] = {"experiment": json.dumps(cfg.model_dump(mode="json")), "resume": resume}
    rc["run-dir"] = str(run_dir.resolve()) if run_dir is not None else ""
    if job_timeout is not None:
        rc["job-timeout"] = float(job_timeout)
    if discovery_timeout is not None:
        rc["discovery-timeout"] = float(discovery_timeout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(rc))
    return path


def register_node(home: Path, public_key: Path, name: str | None = None) -> int:
    """Register a SuperNode's public key with the SuperLink of ``home``'s connection; return its node id."""
    cmd = [flower_bin("flwr"), "supernode", "register", str(public_key), CONNECTION, "--format", "json"]
    if name:
        cmd += ["--name", name]
    res = subprocess.run(cmd, env=flower_env(home), capture_output=True, text=True, timeout=60)
    out = res.stdout
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if res.returncode != 0 or not data.get("success"):
        raise DeployError(f"registering {public_key} failed (exit {res.returncode}): {out.strip()} {res.stderr.strip()}")
    return int(data["node-id"])


def flwr_run(home: Path, app_dir: Path, run_config: Path, log_path: Path | None = None, timeout: float | None = None,
             capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``flwr run APP fedintel --stream --run-config RC``; returns when the run ends.

    With ``capture`` the output is returned (and written to ``log_path``); without, it goes to the console.
    """
    cmd = [flower_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(run_config)]
    res = subprocess.run(cmd, env=flower_env(home), capture_output=capture, text=True, timeout=timeout,
                         cwd=str(app_dir))
    if log_path is not None and capture:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(res.stdout + res.stderr)
    return res


# -- a whole deployment on this machine ---------------------------------------------------------------
@dataclass
class LocalCluster:
    """A SuperLink and SuperNodes on this machine, each its own process tree with its own ``FLWR_HOME``.

    ``certs`` set: TLS, and node authentication unless ``auth=False``; ``certs=None``: plain HTTP
    (tests only). Use as a context manager: every process it started is stopped on exit, even on errors.
    """

    root: Path
    certs: CertPaths | None = None
    auth: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    procs: dict[str, ManagedProcess] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.cli_home = self.root / "flwr-cli"
        write_flwr_config(self.cli_home, self.address, self.certs.ca_cert if self.certs else None)
        self.app_dir = write_app(self.root / "app")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_superlink(self, timeout: float = 60.0) -> ManagedProcess:
        """Start the SuperLink and wait until its port accepts connections."""
        home = self.root / "superlink"
        cmd = superlink_command(self.host, self.port, self.certs, self.auth)
        p = start_process("superlink", cmd, flower_env(home), home / "superlink.log", cwd=home)
        self.procs["superlink"] = p
        wait_for_port(self.host, self.port, timeout, p)
        return p

    def start_supernode(
        self, name: str, data_dir: Path, client_ids: Sequence[int] | None = None, *, private_key: Path | None = None,
        tls: bool | None = None, cache_dir: Path | None = None, threads: int | None = 1,
        max_retries: int | None = None, max_wait_time: float | None = None, env: dict[str, str] | None = None,
        warm: bool = False, superlink: str | None = None,
    ) -> ManagedProcess:
        """Start a SuperNode hosting ``client_ids`` from ``data_dir`` (TLS if the cluster has certs).

        ``warm``: launch ClientApps by forking a pre-imported process (:mod:`.warm`) instead of Flower's
        SuperExec; the launcher is the process named ``<name>-warm``. ``superlink``: another address to reach
        the SuperLink by (a relay), default the cluster's.
        """
        home = self.root / name
        node_config: dict[str, Any] = {"data-dir": str(Path(data_dir).resolve())}
        if client_ids is not None:
            node_config["client-ids"] = ",".join(str(c) for c in client_ids)
        if cache_dir is not None:
            node_config["cache-dir"] = str(Path(cache_dir).resolve())
        if threads:
            node_config["threads"] = int(threads)
        use_tls = (self.certs is not None) if tls is None else tls
        root_cert = self.certs.ca_cert if (use_tls and self.certs) else None
        runtime_port = free_port(self.host)
        cmd = supernode_command(superlink or self.address, runtime_port, node_config, root_cert, private_key,
                                max_retries=max_retries, max_wait_time=max_wait_time, warm=warm)
        p = start_process(name, cmd, flower_env(home, env), home / "supernode.log", cwd=home)
        self.procs[name] = p
        if warm:
            self.procs[f"{name}-warm"] = start_process(
                f"{name}-warm", warm_command(runtime_port, p.pid), flower_env(home, env), home / "warm.log", cwd=home)
        return p

    def kill_node(self, name: str) -> None:
        """SIGKILL SuperNode ``name`` and everything it started (as if its machine died)."""
        for n in (name, f"{name}-warm"):
            if n in self.procs:
                self.procs[n].kill()

    def register(self, name: str, public_key: Path) -> int:
        """Register ``public_key`` for SuperNode ``name``; return the node id the SuperLink gave it."""
        nid = register_node(self.cli_home, public_key, name=name)
        self.node_ids[name] = nid
        return nid

    def run(self, cfg: ExperimentConfig, run_dir: Path, *, job_timeout: float | None = None,
            discovery_timeout: float | None = None, resume: bool = False, timeout: float | None = None,
            capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``cfg`` on the cluster (``flwr run --stream``) and return when it ends."""
        rc = write_run_config(self.root / "runs" / f"{run_dir.name}.toml", cfg, run_dir, resume=resume,
                              job_timeout=job_timeout, discovery_timeout=discovery_timeout)
        return flwr_run(self.cli_home, self.app_dir, rc, self.root / "runs" / f"{run_dir.name}.log", timeout=timeout,
                        capture=capture)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process this cluster started, and any child that outlived them.

        SIGTERM to every process group at once (SuperNodes first), up to ``grace`` seconds to exit, then SIGKILL.
        """
        order = [p for n, p in self.procs.items() if n != "superlink"] + (
            [self.procs["superlink"]] if "superlink" in self.procs else [])
        trees = [p.tree() for p in order]  # before any signal: children are found through their parents
        for p, tree in zip(order, trees, strict=True):
            if p.alive():
                p.send_signal(signal.SIGTERM, tree)
        end = time.monotonic() + grace
        for p in order:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p, tree in zip(order, trees, strict=True):
            p.send_signal(signal.SIGKILL, tree)
            p.stop(grace=0.0)
        # Children that escaped their process tree and group (ClientApps forked by a launcher that died), swept
        # until none is left: a dying launcher may still fork one more.
        for _ in range(10):
            strays = pids_with_env(f"FLWR_HOME={self.root}/")
            if not strays:
                break
            kill_pids(strays)
            time.sleep(0.2)

    def leftovers(self, settle: float = 15.0) -> list[str]:
        """Processes started for this cluster that still run ``settle`` seconds after :meth:`stop` (should be
        none), as ``"pid: command line"``. The wait matters on a loaded machine: a SIGKILLed process that maps
        a model takes a moment to be torn down."""
        end = time.monotonic() + settle
        while True:
            alive = [describe(p) for p in processes_with_env(f"FLWR_HOME={self.root}/")]
            if not alive or time.monotonic() >= end:
                return alive
            time.sleep(0.2)
