"""The figures' layout rules: integer rounds, readable byte axes, legends that never cover curves or titles."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from fedintel.tracking.plots import line_figure, overview_figure, plot_compare


def _rounds(n: int = 5, slope: float = 0.1, start: float = 3.0) -> list[tuple[float, float]]:
    return [(float(r), start - slope * r) for r in range(n)]


def _visible_ticks(ax, axis: str = "x") -> list[float]:
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [t for t in ticks if lo <= t <= hi]


def _run_rows(network: bool = True, task: str = "causal_lm") -> list[dict[str, float]]:
    rows = []
    for r in range(6):
        row = {"round": float(r), "eval_loss": 3.0 - 0.1 * r, "client_eval_loss": 3.1 - 0.1 * r, "wall_s": 2.0}
        row.update({"eval_perplexity": 20.0 - r} if task == "causal_lm" else {"eval_accuracy": 0.5 + 0.05 * r})
        if r:
            row["train_loss"] = 3.2 - 0.1 * r
        row.update(cum_bytes_up=3.5e6 * r, cum_bytes_down=3.5e6 * r, sim_time_s=1.5 * r if network else 0.0,
                   cum_energy_j=4.0 * r if network else 0.0)
        rows.append(row)
    return rows


def test_round_axes_show_only_whole_rounds():
    fig = line_figure([("", _rounds(5))], "round", "loss")
    ticks = _visible_ticks(fig.axes[0])
    assert ticks and all(t == int(t) for t in ticks)
    plt.close(fig)


def test_many_series_get_one_panel_each_with_the_others_behind():
    series = [(f"topic{i}", _rounds(4, start=3 + i / 10)) for i in range(9)]  # one more than one axes holds
    fig = line_figure(series, "round", "eval loss", "per domain")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [name for name, _ in series]
    assert all(ax.get_legend() is None for ax in panels)
    assert all(len(ax.lines) == 9 for ax in panels)  # its own curve and the 8 others, greyed
    assert all(t == int(t) for ax in panels for t in _visible_ticks(ax))
    w, h = fig.get_size_inches() * fig.dpi
    assert w <= 1400 and h <= 800  # fits on a screen
    plt.close(fig)


@pytest.mark.parametrize("n, outside", [(3, False), (6, True)])
def test_legend_sits_outside_the_axes_beyond_a_few_series(n, outside):
    fig = line_figure([(f"run {i}", _rounds(4, start=3 + i)) for i in range(n)], "round", "loss", "title")
    fig.canvas.draw()
    ax = fig.axes[0]
    box, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
    assert bool(legend.x0 >= box.x1) is outside
    assert legend.y1 <= ax.title.get_window_extent().y0 + 1 or legend.x0 >= box.x1  # never over the title
    assert fig.get_window_extent().x1 >= legend.x1  # nor cut off by the figure's edge
    plt.close(fig)


def test_overview_has_every_panel_a_user_asks_for():
    fig = overview_figure(_run_rows(), "run-a")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss (nats)", "global eval perplexity", "simulated time (s, cumulative)",
                      "traffic (MiB, cumulative)", "device energy (J, cumulative)", "global eval loss vs simulated time"]
    traffic = fig.axes[3]
    fig.canvas.draw()
    assert traffic.yaxis.get_offset_text().get_text() == ""  # whole MiB on the axis, no 1e7 offset
    assert all((t / 2**20 * 2) == int(t / 2**20 * 2) for t in _visible_ticks(traffic, "y"))  # 0, 2.5, 5 MiB...
    assert all(t == int(t) for ax in fig.axes[:5] for t in _visible_ticks(ax))
    assert "run-a: 5 rounds, final eval loss 2.5" == fig._suptitle.get_text()
    w, h = fig.get_size_inches() * fig.dpi
    assert w <= 1400 and h <= 800
    plt.close(fig)


def test_overview_without_network_or_for_classification():
    fig = overview_figure(_run_rows(network=False, task="classification"), "run-b")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss (nats)", "accuracy", "host wall time (s, cumulative)", "traffic (MiB, cumulative)"]
    assert "accuracy 0.75" in fig._suptitle.get_text()
    plt.close(fig)


def test_byte_axes_read_in_binary_units(tmp_path):
    series = [("a", [(0.0, 1.0), (2.5e6, 0.5)]), ("b", [(0.0, 1.1), (5e6, 0.4)])]
    fig = line_figure(series, "cumulative uplink", "loss", x_metric="cum_bytes_up")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "cumulative uplink (MiB)" and ax.xaxis.get_offset_text().get_text() == ""
    assert [t / 2**20 for t in _visible_ticks(ax)][:3] == [0, 1, 2]
    plt.close(fig)
    assert plot_compare(dict(series), tmp_path / "c.png", "round", "loss").is_file()
