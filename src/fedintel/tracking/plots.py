"""PNG curves of a run: every round-level metric a user would rather see than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedintel.tracking.store import MetricsStore  # noqa: E402

# (metric, y label); x is the round unless said otherwise
ROUND_CURVES = [
    ("eval_loss", "global eval loss (nats)"),
    ("eval_perplexity", "global eval perplexity"),
    ("eval_accuracy", "global eval accuracy"),
    ("train_loss", "mean client training loss"),
    ("client_eval_loss", "mean per-client eval loss"),
    ("epsilon", "privacy budget epsilon"),
]
# (x metric, y metric, x label, y label)
XY_CURVES = [
    ("sim_time_s", "eval_loss", "simulated time (s)", "global eval loss"),
    ("cum_bytes_up", "eval_loss", "cumulative uplink bytes", "global eval loss"),
    ("sim_time_s", "cum_energy_j", "simulated time (s)", "cumulative device energy (J)"),
]


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Draw the curves of the run in ``run_dir`` into ``out_dir`` (default ``run_dir/plots``)."""
    out_dir = out_dir or run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with MetricsStore(run_dir / "metrics.db", read_only=True) as store:
        for run_id in store.run_ids():
            rows = store.rounds(run_id)
            if not rows:
                continue
            names = set().union(*rows)
            domain_losses = sorted(n for n in names if n.startswith("eval_loss/"))
            for metric, label in ROUND_CURVES:
                pts = [(r["round"], r[metric]) for r in rows if metric in r]
                if pts:
                    written.append(_line(out_dir / f"{metric}.png", [("", pts)], "round", label, run_id))
            for xm, ym, xl, yl in XY_CURVES:
                pts = [(r[xm], r[ym]) for r in rows if xm in r and ym in r]
                if pts:
                    written.append(_line(out_dir / f"{ym}_vs_{xm}.png", [("", pts)], xl, yl, run_id))
            if domain_losses:
                series = [(n.split("/", 1)[1], [(r["round"], r[n]) for r in rows if n in r]) for n in domain_losses]
                written.append(_line(out_dir / "eval_loss_by_domain.png", series, "round", "eval loss", run_id))
    return written


def _line(path: Path, series: list[tuple[str, list[tuple[float, float]]]], xl: str, yl: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=name or None)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(name for name, _ in series):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_compare(series: dict[str, list[tuple[float, float]]], path: Path, xl: str, yl: str, title: str = "") -> Path:
    """One figure comparing several runs (used by benchmarks and the paper report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _line(path, list(series.items()), xl, yl, title)
