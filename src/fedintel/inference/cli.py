"""``fedintel infer {plan,split,speculative,cascade,multiaccess,experts,analytics,certs}``: parse, run, print.

Each mode is ``run(cfg) -> report`` in :mod:`fedintel.inference.modes`: it starts its devices as processes
on this machine (or joins running ones, for ``split --stages``), runs a small workload over mutual-TLS
loopback links (a fresh CA per run unless ``--certs DIR``; plaintext only with ``--insecure``, on
loopback), and stops every process it started, also on errors and Ctrl-C. This module reads the config
and the overrides, prints the report's tables (latency measured here and simulated for the configured
devices and links) and turns errors into exit codes. ``certs`` writes a CA and device certificates for
devices started by hand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config and the modes pull in torch: load them only when a mode runs (fast --help)
    from fedintel.inference.config import InferConfig
    from fedintel.inference.modes.report import ModeReport, ReportTable

log = logging.getLogger(__name__)

# each one a module of fedintel.inference.modes with run(cfg) -> ModeReport
MODES = ("plan", "split", "speculative", "cascade", "multiaccess", "experts", "analytics")


def add_infer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fedintel infer`` and its modes on ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("infer", help="collaborative inference across device processes",
                              description="Collaborative inference: each mode starts device processes, runs a "
                              "workload over mutual-TLS loopback links and reports measured and simulated "
                              "latency.")
    modes = p.add_subparsers(dest="infer_mode", metavar="MODE", required=True)
    helps = {
        "plan": "choose split cut points for the configured devices and links (no processes)",
        "split": "split the model's layers over device processes and generate token by token",
        "speculative": "small draft model here, large model on an edge process verifying k tokens at a time",
        "cascade": "small model here, escalate to the large model when unsure",
        "multiaccess": "several paths to several servers, with failover (optionally kills a node mid-batch)",
        "experts": "route subtasks to expert devices by embedding similarity",
        "analytics": "devices classify with their own models and data; only probabilities leave them",
    }
    for mode in MODES:
        sp = modes.add_parser(mode, help=helps[mode], description=helps[mode])
        sp.add_argument("--config", "-c", default=None, help="infer YAML file (see examples/infer_*.yaml)")
        sp.add_argument("--model", default=None, help="override: model name or directory")
        sp.add_argument("--num-layers", type=int, default=None, help="override: keep the first N layers")
        sp.add_argument("--prompt", default=None, help="override: the prompt")
        sp.add_argument("--max-new-tokens", type=int, default=None, help="override: tokens to generate")
        if mode in ("split", "plan"):
            sp.add_argument("--cuts", default=None, help="override: comma-separated cut points, e.g. 10,20")
        if mode == "split":
            sp.add_argument("--stages", default=None, help="comma-separated addresses of running stage workers "
                            "(their CA in --certs DIR)")
            sp.add_argument("--no-reference", action="store_true", help="skip the single-process comparison")
        if mode in ("speculative", "cascade"):
            sp.add_argument("--draft-model", default=None, help="override: the small model")
            sp.add_argument("--draft-num-layers", type=int, default=None, help="override: small model's layers")
        if mode == "speculative":
            sp.add_argument("--k", type=int, default=None, help="override: draft tokens per round")
        if mode == "cascade":
            sp.add_argument("--threshold", type=float, default=None, help="override: escalation threshold")
        if mode == "multiaccess":
            sp.add_argument("--policy", default=None, help="override: fastest|cheapest|most_available|weighted|round_robin")
            sp.add_argument("--requests", type=int, default=None)
            sp.add_argument("--kill-after", type=int, default=None, help="kill the preferred node after N answers")
        if mode == "experts":
            sp.add_argument("--from-run", default=None, metavar="RUN_DIR",
                            help="override: serve each cluster/edge adapter of a finished clustered or hierarchical "
                            "run as an expert, routed by its clients' centroids, and measure on its held-out queries")
            sp.add_argument("--baseline", default=None, metavar="PATH",
                            help="override: the global adapter to compare with (a FedAvg run directory or a PEFT "
                            "directory; default: the run's own global adapter)")
        if mode != "plan":
            sp.add_argument("--certs", default=None, metavar="DIR", help="override tls_dir: the CA (and ca.key to "
                            "issue device certificates) for the links; default: a fresh CA for this run")
            sp.add_argument("--insecure", action="store_true", default=None,
                            help="plaintext links without authentication (loopback addresses only)")
        sp.set_defaults(func=_entry(mode))
    c = modes.add_parser("certs", help="write a CA and device certificates for devices started by hand",
                         description="Write a CA (unless DIR has one) and a certificate per --device, valid for the "
                         "device name and each --host; plus 'origin', the certificate of the querying process.")
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--device", action="append", default=[], metavar="NAME", help="a device name (repeat)")
    c.add_argument("--host", action="append", default=None, metavar="HOST",
                   help="an IP address or DNS name the devices are reached at (repeat; default 127.0.0.1, localhost)")
    c.set_defaults(func=_cmd_certs)
    return p


def _cmd_certs(args: argparse.Namespace) -> int:
    """``fedintel infer certs``: the CA and device certificates, printed as a list of files."""
    from fedintel.tls import write_device_certs

    try:
        files = write_device_certs(args.out, ["origin", *args.device], args.host or ["127.0.0.1", "localhost"])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


def _entry(mode: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return run_mode(mode, args)

    return run


def _apply_overrides(cfg: InferConfig, args: argparse.Namespace) -> InferConfig:
    upd: dict[str, Any] = {}
    for field in ("model", "num_layers", "prompt", "max_new_tokens", "draft_model", "draft_num_layers", "k",
                  "threshold", "policy", "requests", "kill_after", "insecure", "from_run", "baseline"):
        v = getattr(args, field, None)
        if v is not None:
            upd[field] = v
    if getattr(args, "certs", None):
        upd["tls_dir"] = args.certs
    if getattr(args, "cuts", None):
        upd["cuts"] = [int(x) for x in args.cuts.split(",") if x.strip()]
    if getattr(args, "stages", None):
        upd["stages"] = [x.strip() for x in args.stages.split(",") if x.strip()]
    from fedintel.inference.config import InferConfig, InferConfigError

    try:
        return InferConfig.model_validate({**cfg.model_dump(exclude_unset=True), **upd})
    except Exception as err:
        raise InferConfigError(str(err)) from None


def run_mode(mode: str, args: argparse.Namespace) -> int:
    """Run one mode and print its report; returns the exit code (1: the mode's check failed; 2: a
    user-fixable error)."""
    from rich.console import Console

    from fedintel.inference.config import load_infer_config
    from fedintel.inference.protocol import ProtocolError, RemoteError

    console = Console(width=max(120, Console().width))
    old = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no orphans
    try:
        cfg = _apply_overrides(load_infer_config(getattr(args, "config", None)), args)
        report = _run(mode, cfg, args, console.print)
        for item in report.render():
            console.print(_rich_table(item) if not isinstance(item, str) else item)
        return 0 if report.ok else 1
    except (ValueError, RuntimeError, ProtocolError, RemoteError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old)


def _run(mode: str, cfg: InferConfig, args: argparse.Namespace, notify: Callable[[str], None]) -> ModeReport:
    """``fedintel.inference.modes.<mode>.run`` with the options that are not config settings."""
    run = importlib.import_module(f"fedintel.inference.modes.{mode}").run
    if mode == "split":
        return run(cfg, reference=not args.no_reference, notify=notify)
    if mode == "multiaccess":
        return run(cfg, notify=lambda msg: notify(f"[yellow]{msg}[/yellow]"))
    return run(cfg)


def _rich_table(table: ReportTable) -> Any:
    from rich.table import Table

    t = Table(title=table.title)
    for i, col in enumerate(table.columns):
        t.add_column(col, justify="right" if i in table.right else "left")
    for row in table.rows:
        t.add_row(*row)
    return t


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry, the same parser as ``fedintel infer`` (``python -m fedintel.inference.cli infer split ...``)."""
    parser = argparse.ArgumentParser(prog="fedintel")
    add_infer_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
