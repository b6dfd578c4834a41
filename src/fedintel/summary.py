"""The end-of-run summary table (rich), built from the metrics store."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedintel.tracking.store import MetricsStore

COLUMNS = [
    ("round", "round", "{:.0f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("eval_loss", "eval loss", "{:.4f}"),
    ("eval_perplexity", "eval ppl", "{:.2f}"),
    ("eval_accuracy", "eval acc", "{:.3f}"),
    ("client_eval_loss", "client eval loss", "{:.4f}"),
    ("clients_accepted", "accepted", "{:.0f}"),
    ("clients_rejected", "rejected", "{:.0f}"),
    ("bytes_up", "uplink bytes", "{:,.0f}"),
    ("sim_time_s", "sim time (s)", "{:.2f}"),
    ("cum_energy_j", "energy (J)", "{:.1f}"),
    ("epsilon", "epsilon", "{:.3f}"),
    ("wall_s", "wall (s)", "{:.1f}"),
]


def summary_table(run_dir: Path) -> Table:
    """Per-round metrics of the run in ``run_dir`` as a rich table (columns that exist only)."""
    with MetricsStore(Path(run_dir) / "metrics.db", read_only=True) as store:
        run_id = store.run_ids()[-1]
        rows = store.rounds(run_id)
        info = store.run_info(run_id)
    present = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    table = Table(title=f"{run_id} ({info['status']})")
    for _, header, _ in present:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(*(fmt.format(r[k]) if k in r else "-" for k, _, fmt in present))
    return table


def print_summary(run_dir: Path, console: Console | None = None) -> None:
    (console or Console()).print(summary_table(run_dir))
