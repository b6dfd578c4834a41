"""``fedintel forget RUN_DIR --client ID``: remove a client's influence from a run (unlearning on opt-out)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_forget(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedintel.cli import console
    from fedintel.tracking.progress import NullReporter, RichReporter
    from fedintel.unlearning.forget import forget

    run_dir = Path(args.run_dir)
    reporter = NullReporter() if args.quiet else RichReporter()
    kwargs: dict[str, Any] = {"out_dir": Path(args.out) if args.out else None, "reporter": reporter}
    if args.method == "approximate":
        kwargs["recovery_rounds"] = args.recovery_rounds
    else:
        kwargs["scope"] = args.scope
    result = forget(run_dir, args.client, args.method, **kwargs)
    if result.method == "none":
        console.print(f"client {args.client} never took part in {run_dir}: nothing to forget, nothing written")
        return 0

    table = Table(title=f"forget client {args.client} ({result.method})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("unlearned run", str(result.run_dir))
    table.add_row("client's first round", str(result.first_round))
    table.add_row("rounds its update was aggregated", ", ".join(map(str, result.contributed_rounds)) or "-")
    if result.method == "exact":
        table.add_row("restarted after round", str(result.restart_round))
        table.add_row("rounds recomputed", f"{result.rounds_recomputed} of {result.rounds_total}")
        if result.scope == "cluster":
            table.add_row("retrained", f"cluster {result.retrained_cluster} only (others replayed)")
        else:
            table.add_row("retrained", "every client" + (f" ({result.scope_note})" if result.scope_note else ""))
    else:
        table.add_row("recovery rounds", str(result.rounds_recomputed))
    table.add_row("client steps (full retraining)", f"{result.client_steps} ({result.full_retrain_steps})")
    table.add_row("cost vs full retraining", f"{result.cost_ratio:.2f}x")
    table.add_row("round wall s (full retraining)", f"{result.wall_s:.1f} ({result.full_retrain_wall_s:.1f})")
    if "eval_loss" in result.final:
        table.add_row("final eval_loss", f"{result.final['eval_loss']:.4f}")
    if args.check_membership:
        from fedintel.audit.membership import run_membership
        from fedintel.config import load_config
        from fedintel.world import build_world

        world = build_world(load_config(run_dir / "config.yaml"))
        before = run_membership(run_dir, args.client, world)
        after = run_membership(result.run_dir, args.client, world)  # type: ignore[arg-type]
        table.add_row("membership AUC before -> after", f"{before.auc:.3f} -> {after.auc:.3f}")
        table.add_row("unseen-data level (AUC)", f"0.5 +- {after.auc_std:.2f}")
        table.add_row("member loss gap before -> after", f"{before.gap:.4f} -> {after.gap:.4f} nats")
    console.print(table)
    return 0


def add_forget_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fedintel forget`` on ``subparsers``."""
    p = subparsers.add_parser(
        "forget", help="remove a client's influence from a run (unlearning on opt-out)",
        description="Write a copy of RUN_DIR without the client's influence. exact: retrain from the last "
        "checkpoint before the client's first round with the client opted out (the same adapter as a run that "
        "never had it; in a clustered run with fixed clusters only the client's cluster is retrained). approximate: subtract the client's stored updates from the final adapter, then train a "
        "few recovery rounds without it (needs output.save_client_updates: true).",
    )
    p.add_argument("run_dir", help="a run directory (holding config.yaml, metrics.db, checkpoints/)")
    p.add_argument("--client", type=int, required=True, metavar="ID", help="the client to forget")
    p.add_argument("--method", choices=["exact", "approximate"], default="exact", help="default: exact")
    p.add_argument("--scope", choices=["auto", "run", "cluster"], default="auto",
                   help="exact: retrain every client (run) or only the client's cluster of a clustered run, "
                   "replaying the others (cluster); auto (default) picks cluster whenever that is exact")
    p.add_argument("--recovery-rounds", type=int, default=2, metavar="N",
                   help="approximate: rounds trained without the client after the subtraction (default 2)")
    p.add_argument("--out", metavar="DIR",
                   help="the unlearned run directory (default RUN_DIR-forget-ID, or RUN_DIR-unlearn-ID)")
    p.add_argument("--check-membership", action="store_true",
                   help="also run a loss-threshold membership-inference attack on the client's data, before and after")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_forget)
    return p
