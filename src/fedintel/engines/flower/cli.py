"""``fedintel deploy ...``: run an experiment file on Flower's Deployment Engine.

Sub-commands (each has ``--help``):

- ``certs``: write a CA, the SuperLink's TLS certificate and SuperNode key pairs;
- ``partition``: write each client's shard (``client_<id>.jsonl``) for its SuperNode;
- ``superlink``: start a SuperLink (TLS + node authentication unless ``--insecure``);
- ``register``: register a SuperNode's public key with the SuperLink;
- ``supernode``: start a SuperNode that hosts some clients' shards;
- ``run``: run an experiment file across the SuperNodes and print its summary;
- ``local``: all of the above on this machine (a SuperLink and N SuperNodes), then stop them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _default_home(role: str) -> Path:
    from fedintel.paths import cache_dir

    return cache_dir() / "flower" / role


def _certs(args: argparse.Namespace) -> Any:
    """The certificate set of ``--certs``, or None with ``--insecure`` (an error if neither)."""
    from fedintel.engines.flower.certs import CertPaths

    if getattr(args, "insecure", False):
        _warn_insecure()
        return None
    if not getattr(args, "certs", None):
        raise SystemExit("error: pass --certs DIR (from `fedintel deploy certs`) or, for tests only, --insecure")
    paths = CertPaths(Path(args.certs).expanduser().resolve())
    if not paths.ca_cert.is_file():
        raise SystemExit(f"error: {paths.ca_cert} is missing; create it with `fedintel deploy certs --out {args.certs}`")
    return paths


def _warn_insecure() -> None:
    print("warning: --insecure: traffic is plain HTTP and any SuperNode may join; use it for tests only",
          file=sys.stderr)


def _exec(cmd: list[str], env: dict[str, str]) -> int:
    """Replace this process with ``cmd`` (so signals and Ctrl-C go straight to Flower)."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


# -- sub-commands -------------------------------------------------------------------------------------------
def _cmd_certs(args: argparse.Namespace) -> int:
    from fedintel.engines.flower.certs import write_certs

    paths = write_certs(args.out, hosts=args.host or ["127.0.0.1", "localhost"], nodes=args.nodes)
    print(f"CA: {paths.ca_cert}\nSuperLink: {paths.server_cert} {paths.server_key}")
    for i in range(args.nodes):
        print(f"SuperNode {i}: {paths.node_key(i)} (private) {paths.node_pub(i)} (register this)")
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    from fedintel.config import load_config
    from fedintel.engines.flower.shards import write_shards

    cfg = load_config(args.config, args.set)
    out = write_shards(cfg, args.out)
    print(f"wrote {cfg.federation.num_clients} shards and manifest.json to {out}; give SuperNode k "
          f"client_<k>.jsonl and manifest.json (node config data-dir=..., client-ids=k)")
    return 0


def _cmd_superlink(args: argparse.Namespace) -> int:
    from fedintel.engines.flower.deploy import flower_env, superlink_command

    home = Path(args.home or _default_home("superlink")).expanduser().resolve()
    cmd = superlink_command(args.host, args.port, _certs(args), auth=not args.no_auth,
                            database=Path(args.database) if args.database else None)
    if args.no_auth and not args.insecure:
        print("warning: --no-auth: any SuperNode that trusts the CA may join", file=sys.stderr)
    return _exec(cmd, flower_env(home))


def _cmd_register(args: argparse.Namespace) -> int:
    from fedintel.engines.flower.deploy import register_node, write_flwr_config

    certs = _certs(args)
    home = Path(args.home or _default_home("cli")).expanduser().resolve()
    write_flwr_config(home, args.superlink, certs.ca_cert if certs else None)
    nid = register_node(home, Path(args.public_key), name=args.name)
    print(f"registered {args.public_key} as SuperNode {nid}")
    return 0


def _cmd_supernode(args: argparse.Namespace) -> int:
    from fedintel.engines.flower.deploy import flower_env, supernode_command

    certs = _certs(args)
    if certs is not None and not args.key:
        raise SystemExit("error: pass --key node_<i>.key (registered with `fedintel deploy register`) or --insecure")
    data_dir = Path(args.data_dir).expanduser().resolve()
    if not (data_dir / "manifest.json").is_file():
        raise SystemExit(f"error: {data_dir}/manifest.json is missing; copy the output of `fedintel deploy partition`")
    node_config: dict[str, Any] = {"data-dir": str(data_dir)}
    if args.client_ids:
        node_config["client-ids"] = args.client_ids
    if args.cache_dir:
        node_config["cache-dir"] = str(Path(args.cache_dir).expanduser().resolve())
    if args.threads:
        node_config["threads"] = args.threads
    home = Path(args.home or _default_home(f"supernode-{args.port}")).expanduser().resolve()
    if args.warm_model:
        from fedintel.engines.flower.workflows import warm_model

        warm_model(args.warm_model, args.cache_dir)
        print(f"model {args.warm_model} cached for this node", file=sys.stderr)
    cmd = supernode_command(args.superlink, args.port, node_config, certs.ca_cert if certs else None,
                            Path(args.key).expanduser().resolve() if (certs and args.key) else None, warm=args.warm)
    if not args.warm:
        return _exec(cmd, flower_env(home))
    from fedintel.engines.flower.workflows import run_warm_supernode

    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return run_warm_supernode(cmd, flower_env(home), args.port)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedintel.config import load_config
    from fedintel.engines.flower.workflows import submit_run
    from fedintel.experiment import new_run_dir

    cfg = load_config(args.config, args.set)
    certs = _certs(args)
    home = Path(args.home or _default_home("cli")).expanduser().resolve()
    run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else new_run_dir(cfg).resolve()
    code = submit_run(cfg, args.superlink, certs, home, run_dir, resume=args.resume, job_timeout=args.job_timeout,
                      discovery_timeout=args.discovery_timeout)
    return _report(code, run_dir)


def _report(returncode: int, run_dir: Path) -> int:
    """Print the run's summary if the ServerApp finished it (the run dir is on this machine)."""
    if (run_dir / "summary.json").is_file():
        from fedintel.cli import console
        from fedintel.summary import print_summary

        print_summary(run_dir, console)
        print(f"run directory: {run_dir}")
        if (run_dir / "plots" / "overview.png").is_file():
            print(f"overview: {run_dir / 'plots' / 'overview.png'}")
        return 0
    print(f"error: the run did not finish (flwr exit code {returncode}); see the output above"
          + (f" and {run_dir}" if run_dir.exists() else ""), file=sys.stderr)
    return 1


def _cmd_local(args: argparse.Namespace) -> int:
    from fedintel.config import load_config
    from fedintel.engines.flower.deploy import DeployError
    from fedintel.engines.flower.workflows import LocalDeployment, run_local
    from fedintel.experiment import new_run_dir

    cfg = load_config(args.config, args.set)
    root = Path(args.dir).expanduser().resolve() if args.dir else Path(tempfile.mkdtemp(prefix="fedintel-flower-"))
    if args.insecure:
        _warn_insecure()
    run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else new_run_dir(cfg).resolve()

    def ready(d: LocalDeployment) -> None:
        print(f"SuperLink on {d.address} ({'TLS + node auth' if d.secure else 'insecure'}), {len(d.hosts)} "
              f"SuperNodes hosting clients {d.hosts}; logs in {d.logs}", flush=True)

    try:
        code = run_local(cfg, root, run_dir, nodes=args.nodes, insecure=args.insecure, cache_dir=args.cache_dir,
                         threads=args.threads, warm=not args.no_warm, job_timeout=args.job_timeout,
                         discovery_timeout=args.discovery_timeout, on_ready=ready)
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return _report(code, run_dir)


# -- parser -------------------------------------------------------------------------------------------------
def _tls_args(p: argparse.ArgumentParser, key: bool = False) -> None:
    p.add_argument("--certs", metavar="DIR", help="directory written by `fedintel deploy certs` (TLS, node auth)")
    if key:
        p.add_argument("--key", metavar="FILE", help="this SuperNode's private key (node_<i>.key); its .pub must "
                       "be registered with the SuperLink")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no node authentication (tests only)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (engine: flower; see examples/flower_*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--run-dir", help="where the ServerApp writes the run (default: output.dir/name-timestamp)")
    p.add_argument("--job-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for one client's reply before it counts as failed (default 600)")
    p.add_argument("--discovery-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for SuperNodes to cover every client at the start (default 120)")


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fedintel deploy`` and its sub-commands on ``subparsers``."""
    p = subparsers.add_parser(
        "deploy", help="run experiments on Flower's Deployment Engine (SuperLink + SuperNodes)",
        description="Run an experiment file on Flower's Deployment Engine: a SuperLink coordinates SuperNodes "
        "that each hold their own clients' data. Secure by default (TLS + registered node keys).")
    sub = p.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)

    sp = sub.add_parser("certs", help="write a CA, the SuperLink certificate and SuperNode keys",
                        description="Write ca.crt/ca.key, server.pem/server.key (for --host names) and "
                        "node_<i>.key/.pub key pairs for Flower's node authentication.")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--host", action="append", help="IP or DNS name SuperNodes use to reach the SuperLink "
                    "(repeatable; default 127.0.0.1 and localhost)")
    sp.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to create")
    sp.set_defaults(func=_cmd_certs)

    sp = sub.add_parser("partition", help="write each client's shard for its SuperNode",
                        description="Partition the experiment's data exactly as the local engine does and write "
                        "DIR/client_<id>.jsonl plus DIR/manifest.json.")
    sp.add_argument("config", help="experiment YAML")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    sp.set_defaults(func=_cmd_partition)

    sp = sub.add_parser("superlink", help="start a SuperLink (foreground)",
                        description="Start flower-superlink with TLS and node authentication, no telemetry and "
                        "no runtime dependency installation.")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port of the SuperLink's HTTP APIs (default 8000)")
    sp.add_argument("--home", help="FLWR_HOME of the SuperLink (default ~/.cache/fedintel/flower/superlink)")
    sp.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    sp.add_argument("--no-auth", action="store_true", help="TLS without node authentication")
    _tls_args(sp)
    sp.set_defaults(func=_cmd_superlink)

    sp = sub.add_parser("register", help="register a SuperNode's public key with the SuperLink",
                        description="Register node_<i>.pub so the SuperNode holding node_<i>.key may join.")
    sp.add_argument("public_key", help="node_<i>.pub from `fedintel deploy certs`")
    sp.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink address host:port")
    sp.add_argument("--name", help="a name for the SuperNode")
    sp.add_argument("--home", help="FLWR_HOME of the flwr CLI (default ~/.cache/fedintel/flower/cli)")
    _tls_args(sp)
    sp.set_defaults(func=_cmd_register)

    sp = sub.add_parser("supernode", help="start a SuperNode hosting some clients (foreground)",
                        description="Start flower-supernode for clients whose shards are in --data-dir.")
    sp.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink address host:port")
    sp.add_argument("--data-dir", required=True, help="directory with client_<id>.jsonl and manifest.json")
    sp.add_argument("--client-ids", help="comma-separated client ids hosted here (default: every shard in data-dir)")
    sp.add_argument("--port", type=int, default=9094, help="local port of the node's ClientApp API (one per node)")
    sp.add_argument("--cache-dir", help="the node's model cache (FEDINTEL_CACHE); default ~/.cache/fedintel")
    sp.add_argument("--threads", type=int, help="torch threads per ClientApp process")
    sp.add_argument("--warm-model", metavar="NAME", help="cache this base model on local disk before starting")
    sp.add_argument("--warm", action="store_true", help="launch each ClientApp by forking a pre-imported process "
                    "(fedintel.engines.flower.warm) instead of Flower's SuperExec: seconds faster per message; "
                    "restart the node after upgrading fedintel")
    sp.add_argument("--home", help="FLWR_HOME of the SuperNode (default ~/.cache/fedintel/flower/supernode-PORT)")
    _tls_args(sp, key=True)
    sp.set_defaults(func=_cmd_supernode)

    sp = sub.add_parser("run", help="run an experiment across the SuperNodes",
                        description="Submit the experiment to the SuperLink (flwr run --stream) and print its "
                        "summary. The run directory is written where the SuperLink runs.")
    _run_args(sp)
    sp.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink address host:port")
    sp.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    sp.add_argument("--home", help="FLWR_HOME of the flwr CLI (default ~/.cache/fedintel/flower/cli)")
    _tls_args(sp)
    sp.set_defaults(func=_cmd_run)

    sp = sub.add_parser("local", help="a SuperLink and N SuperNodes on this machine, run, stop",
                        description="Write certificates and shards, start a SuperLink and N SuperNodes here, "
                        "run the experiment across them, then stop every process.")
    _run_args(sp)
    sp.add_argument("--nodes", type=int, help="SuperNodes to start (default: one per client); client c goes to "
                    "node c mod N")
    sp.add_argument("--dir", help="working directory for certs, shards and logs (default: a new temp dir)")
    sp.add_argument("--cache-dir", help="model cache shared by the local nodes (default ~/.cache/fedintel)")
    sp.add_argument("--threads", type=int, default=1, help="torch threads per ClientApp process (default 1)")
    sp.add_argument("--no-warm", action="store_true", help="Flower's own SuperExec (a fresh Python per message) "
                    "instead of fedintel's warm launcher")
    sp.add_argument("--insecure", action="store_true", help="plain HTTP, no node authentication (tests only)")
    sp.set_defaults(func=_cmd_local)
    return p
