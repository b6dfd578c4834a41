"""PNG figures of a run: one overview that fits on a screen, and one file per curve a user would rather see than read.

Every figure follows the same rules: rounds are integers on every round axis, byte counts read in KiB/MiB/GiB,
up to :data:`LEGEND_INSIDE` series share one axes with the legend inside, up to :data:`MAX_SERIES_ONE_AXES` with
the legend outside the axes, and more (the 21 chatterbot topics) get small multiples: one panel per series with
the others drawn faintly behind it for comparison. The helpers (:func:`round_axis`, :func:`bytes_axis`,
:func:`line_figure`) are shared with the reproduction report and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from fedintel.tracking.store import MetricsStore  # noqa: E402

Points = list[tuple[float, float]]
Series = list[tuple[str, Points]]

OVERVIEW = "overview.png"
"""The one figure of a run (loss, perplexity or accuracy, simulated time, bytes, energy per round)."""
LEGEND_INSIDE = 4
MAX_SERIES_ONE_AXES = 8
DPI = 100

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
    ("cum_bytes_up", "eval_loss", "cumulative uplink", "global eval loss"),
    ("sim_time_s", "cum_energy_j", "simulated time (s)", "cumulative device energy (J)"),
]


# -- shared style ------------------------------------------------------------------------------------
def round_axis(ax: Axes, axis: str = "x") -> None:
    """Integer ticks only (rounds are never 0.5)."""
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def byte_unit(largest: float) -> tuple[float, str]:
    """The binary unit (factor, name) that shows byte counts up to ``largest`` as numbers below 1024."""
    factor = 1.0
    for name in ("B", "KiB", "MiB", "GiB"):
        if abs(largest) < 1024 * factor:
            return factor, name
        factor *= 1024
    return factor, "TiB"


def bytes_axis(ax: Axes, axis: str = "x", unit: tuple[float, str] | None = None) -> str:
    """Tick labels of a byte-count axis in binary units (nice ticks in that unit, no ``1e7`` offset); returns the
    unit's name for the axis label. ``unit`` defaults to the one that fits the axis's current upper limit."""
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    factor, name = unit or byte_unit(max(abs(lo), abs(hi)))
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(_ScaledLocator(factor))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / factor:g}"))
    return name


class _ScaledLocator(MaxNLocator):
    """:class:`MaxNLocator` ticks chosen in a scaled unit (e.g. whole MiB), placed in raw units."""

    def __init__(self, factor: float) -> None:
        super().__init__(nbins="auto", steps=[1, 2, 2.5, 5, 10])
        self.factor = factor

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        return [t * self.factor for t in super().tick_values(vmin / self.factor, vmax / self.factor)]


def style_axis(ax: Axes, metric: str, axis: str = "x") -> str:
    """Integer ticks for rounds, binary units for byte counts (call after plotting); returns a unit to add to the
    axis label (``"MiB"``...) or ``""``."""
    if metric == "round":
        round_axis(ax, axis)
    elif "bytes" in metric:
        return bytes_axis(ax, axis)
    return ""


def line_figure(series: Series, xlabel: str, ylabel: str, title: str = "", x_metric: str = "round") -> Figure:
    """One figure of ``series`` (name, points): one axes, or small multiples above :data:`MAX_SERIES_ONE_AXES`."""
    if len(series) > MAX_SERIES_ONE_AXES:
        return _small_multiples(series, xlabel, ylabel, title, x_metric)
    named = any(name for name, _ in series)
    outside = named and len(series) > LEGEND_INSIDE
    fig, ax = plt.subplots(figsize=(7.6 if outside else 6, 4))
    for name, pts in series:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", ms=4, label=name or None)
    _decorate(ax, xlabel, ylabel, x_metric)
    if title:
        ax.set_title(title)
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)
    elif named:
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def _small_multiples(series: Series, xlabel: str, ylabel: str, title: str, x_metric: str) -> Figure:
    """One panel per series on shared axes, every other series in light grey behind it."""
    n = len(series)
    cols = min(n, math.ceil(math.sqrt(n * 16 / 9)))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(1.9 * cols + 0.8, 14), 1.55 * rows + 1.0),
                             sharex=True, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        for j, (_, pts) in enumerate(series):
            if j != i:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, color="0.85", lw=0.8, zorder=1)
        name, pts = series[i]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, color=f"C{i % 10}", marker="o", ms=2.5, lw=1.6, zorder=2)
        ax.set_title(name, fontsize=8, pad=2)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    unit = ""
    for ax in axes.flat:  # after every panel is drawn: the shared limits are final
        unit = style_axis(ax, x_metric) or unit
    fig.supxlabel(f"{xlabel} ({unit})" if unit else xlabel, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(title or ylabel, fontsize=10)
    fig.tight_layout()
    return fig


def _decorate(ax: Axes, xlabel: str, ylabel: str, x_metric: str = "round", y_metric: str = "") -> None:
    ax.grid(alpha=0.3)
    x_unit, y_unit = style_axis(ax, x_metric, "x"), style_axis(ax, y_metric, "y")
    ax.set_xlabel(f"{xlabel} ({x_unit})" if x_unit and xlabel else xlabel)
    ax.set_ylabel(f"{ylabel} ({y_unit})" if y_unit and ylabel else ylabel)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# -- a run's figures ---------------------------------------------------------------------------------
def plot_run(run_dir: Path, out_dir: Path | None = None, *, overview: bool = True) -> list[Path]:
    """Draw the overview (unless not ``overview``) and the curves of the run in ``run_dir`` into ``out_dir``
    (default ``run_dir/plots``)."""
    out_dir = out_dir or run_dir / "plots"
    written = []
    with MetricsStore(run_dir / "metrics.db", read_only=True) as store:
        for run_id in store.run_ids():
            rows = store.rounds(run_id)
            if not rows:
                continue
            if overview:
                written.append(save(overview_figure(rows, run_id), out_dir / OVERVIEW))
            for metric, label in ROUND_CURVES:
                pts = [(r["round"], r[metric]) for r in rows if metric in r]
                if pts:
                    written.append(save(line_figure([("", pts)], "round", label, run_id), out_dir / f"{metric}.png"))
            for xm, ym, xl, yl in XY_CURVES:
                pts = [(r[xm], r[ym]) for r in rows if xm in r and ym in r]
                if len({x for x, _ in pts}) > 1:  # without a simulated network the clock never moves: no curve
                    fig = line_figure([("", pts)], xl, yl, run_id, x_metric=xm)
                    written.append(save(fig, out_dir / f"{ym}_vs_{xm}.png"))
            names = set().union(*rows)
            domain_losses = sorted(n for n in names if n.startswith("eval_loss/"))
            if domain_losses:
                series = [(n.split("/", 1)[1], [(r["round"], r[n]) for r in rows if n in r]) for n in domain_losses]
                fig = line_figure(series, "round", "eval loss (nats)", f"{run_id}: eval loss per domain")
                written.append(save(fig, out_dir / "eval_loss_by_domain.png"))
    return written


def _pts(rows: Sequence[dict[str, float]], metric: str, x: str = "round") -> Points:
    return [(r[x], r[metric]) for r in rows if metric in r and x in r]


def overview_figure(rows: Sequence[dict[str, float]], title: str) -> Figure:
    """Loss, perplexity or accuracy, simulated time, bytes and energy per round (and epsilon under DP),
    in one figure of 2 x 3 panels (about 1200 x 650 pixels); panels without data are left out."""
    panels = []
    loss = [(label, _pts(rows, m)) for m, label in (("train_loss", "training (clients' mean)"),
                                                   ("eval_loss", "global eval"),
                                                   ("client_eval_loss", "clients' own eval data"))]
    panels.append(("loss (nats)", [s for s in loss if s[1]], ""))
    if any("eval_accuracy" in r for r in rows):
        acc = [(label, _pts(rows, m)) for m, label in (("eval_accuracy", "global eval"),
                                                      ("client_eval_accuracy", "clients' own eval data"))]
        panels.append(("accuracy", [s for s in acc if s[1]], ""))
    elif any("eval_perplexity" in r for r in rows):
        panels.append(("global eval perplexity", [("", _pts(rows, "eval_perplexity"))], ""))
    sim = _pts(rows, "sim_time_s")
    if sim and any(y > 0 for _, y in sim):
        panels.append(("simulated time (s, cumulative)", [("", sim)], ""))
    else:  # no network simulated: the host's time is the only clock
        wall, total = [], 0.0
        for r in rows:
            total += r.get("wall_s", 0.0)
            wall.append((r["round"], total))
        panels.append(("host wall time (s, cumulative)", [("", wall)], ""))
    traffic = [(label, _pts(rows, m)) for m, label in (("cum_bytes_up", "uplink"), ("cum_bytes_down", "downlink"),
                                                      ("cum_bytes_cloud", "edge to cloud"))]
    traffic = [s for s in traffic if s[1] and any(y > 0 for _, y in s[1])]
    if traffic:
        panels.append(("traffic ({unit}, cumulative)", traffic, "bytes"))
    loss_time = _pts(rows, "eval_loss", "sim_time_s")
    energy = _pts(rows, "cum_energy_j")
    if energy and any(y > 0 for _, y in energy):
        panels.append(("device energy (J, cumulative)", [("", energy)], ""))
    if any("epsilon" in r for r in rows):
        panels.append(("privacy budget epsilon", [("", _pts(rows, "epsilon"))], ""))
    elif sim and any(y > 0 for _, y in sim) and loss_time:
        panels.append(("global eval loss vs simulated time", [("", loss_time)], "time"))
    panels = [p for p in panels if p[1]][:6]
    cols = 3 if len(panels) > 4 else max(1, min(len(panels), 2))
    n_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3.1 * n_rows + 0.4), squeeze=False)
    for ax, (label, series, kind) in zip(axes.flat, panels, strict=False):
        for k, (name, pts) in enumerate(series):  # distinct styles: equal curves (uplink = downlink) stay visible
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="osD"[k % 3], ms=4 - k, ls=("-", "--", ":")[k % 3], label=name or None)
        ax.grid(alpha=0.3)
        ax.set_xlabel("simulated time (s)" if kind == "time" else "round", fontsize=9)
        style_axis(ax, "sim_time_s" if kind == "time" else "round", "x")
        unit = style_axis(ax, "bytes", "y") if kind == "bytes" else ""
        ax.set_title(label.format(unit=unit), fontsize=10)
        ax.tick_params(labelsize=8)
        if any(name for name, _ in series):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    last = rows[-1]
    headline = ", ".join(f"{label} {last[m]:.4g}" for m, label in (("eval_loss", "eval loss"),
                                                                   ("eval_accuracy", "accuracy"))
                         if m in last)
    fig.suptitle(f"{title}: {int(last['round'])} rounds" + (f", final {headline}" if headline else ""), fontsize=11)
    fig.tight_layout()
    return fig


def plot_compare(series: dict[str, list[tuple[float, float]]], path: Path, xl: str, yl: str, title: str = "",
                 x_metric: str | None = None) -> Path:
    """One figure comparing several runs (used by benchmarks and the paper report); ``x_metric`` (default: guessed
    from ``xl``) styles the x axis: integer rounds, byte units."""
    x_metric = x_metric or ("round" if xl.strip().lower() == "round" else "bytes" if "byte" in xl.lower() else "")
    return save(line_figure(list(series.items()), xl, yl, title, x_metric=x_metric), path)
