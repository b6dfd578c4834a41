"""Write the reproduction report (markdown + PNG plots): each claim of the paper, our numbers, verdict."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedintel.config import load_config  # noqa: E402
from fedintel.reproduce.paper import (  # noqa: E402
    FIGURES,
    LABELS,
    PaperRun,
    final,
    fmt,
    rounds_to_reach,
    run_totals,
    series,
)
from fedintel.tracking.plots import save, style_axis  # noqa: E402

PAPER_HYPER = {  # section V of the paper, per figure: what each "here" row is measured against
    "fig5": "8 users x 1600 samples, batch 80, lr 2e-4, 128 tokens, LLaMA-7B",
    "fig6a": "16 users in 4 clusters, GPT2-Small",
    "fig6b": "16 users in 4 clusters, GPT2-Small",
}


def _band_plot(runs: list[PaperRun], experiments: list[str], metric: str, path: Path, ylabel: str,
               x: str = "round", xlabel: str = "round") -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    means = []
    for exp in experiments:
        xs, ys = series(runs, exp, metric, x)  # x from the first seed (simulated time differs per seed)
        mean, std = ys.mean(axis=0), ys.std(axis=0)
        ax.plot(xs, mean, marker="o", ms=4, label=LABELS[exp])
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
        means.append(mean)
    unit = style_axis(ax, x)  # whole rounds; uplink bytes in MiB
    ax.set_xlabel(xlabel.replace("bytes", f"traffic ({unit})") if unit else xlabel)
    lo, hi = float(np.min(np.concatenate(means))), float(np.max(np.concatenate(means)))
    if lo > 0 and hi / lo > 20:  # e.g. perplexities 30 and 100,000: a linear axis flattens the small ones to 0
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def _rel(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _verdict(ok: bool) -> str:
    return "**holds**" if ok else "**does not hold**"


def claims(runs: list[PaperRun]) -> list[list[str]]:
    """Rows: claim, metric, our numbers (mean ± std over seeds), verdict."""
    rows = []
    f5 = FIGURES["fig5"]
    loss = {e: final(runs, e, "train_loss") for e in f5}
    rows.append(["Fig. 5a: FL-LoRA has a lower fine-tuning loss than FL-P-Tuning and FL-Prompt-Tuning",
                 "final mean client training loss",
                 "; ".join(f"{LABELS[e]} {fmt(loss[e])}" for e in f5),
                 _verdict(all(loss["fig5_lora"].mean() < loss[e].mean() for e in f5[1:]))])
    ppl0 = {e: series(runs, e, "eval_perplexity")[1][:, 0] for e in f5}
    ppl = {e: final(runs, e, "eval_perplexity") for e in f5}
    rows.append(["Fig. 5b: average perplexity decreases with rounds for all three schemes",
                 "eval perplexity, round 0 -> last round",
                 "; ".join(f"{LABELS[e]} {ppl0[e].mean():.2f} -> {fmt(ppl[e], 2)}" for e in f5),
                 _verdict(all(ppl[e].mean() < ppl0[e].mean() for e in f5))])
    rows.append(["Fig. 5b: FL-LoRA reaches the lowest perplexity", "final eval perplexity",
                 "; ".join(f"{LABELS[e]} {fmt(ppl[e], 2)}" for e in f5),
                 _verdict(all(ppl["fig5_lora"].mean() < ppl[e].mean() for e in f5[1:]))])
    for fig, task in (("fig6a", "generation"), ("fig6b", "classification")):
        fl, cfl = FIGURES[fig]
        for metric, what in (("train_loss", "fine-tuning (training) loss"), ("client_eval_loss", "held-out loss on each client's own data")):
            a, b = final(runs, fl, metric), final(runs, cfl, metric)
            reach = rounds_to_reach(runs, cfl, metric, float(a.mean()))
            total = series(runs, fl, metric)[0][-1]
            reach_s = f"round {reach:.0f} of {total:.0f}" if math.isfinite(reach) else "never"
            rows.append([f"Fig. 6{fig[-1]}: CFL-LoRA converges faster and lower than FL-LoRA ({task})",
                         f"final {what}; round where CFL reaches FL's final value",
                         f"FL {fmt(a)}; CFL {fmt(b)}; CFL reaches FL's final at {reach_s}",
                         _verdict(b.mean() < a.mean() and reach < total)])
        if fig == "fig6b":
            acc_a, acc_b = final(runs, fl, "client_eval_accuracy"), final(runs, cfl, "client_eval_accuracy")
            rows.append(["Fig. 6b (accuracy view): CFL-LoRA classifies better than FL-LoRA",
                         "final accuracy on each client's own held-out data", f"FL {fmt(acc_a)}; CFL {fmt(acc_b)}",
                         _verdict(acc_b.mean() > acc_a.mean())])
        purity = final(runs, cfl, "cluster_purity")
        rows.append([f"(setup check) similarity clustering recovers the 4 {task} domains", "cluster purity",
                     fmt(purity, 2), _verdict(purity.mean() > 0.99)])
    return rows


def hyperparameter_rows(runs: list[PaperRun]) -> list[list[str]]:
    """One row per experiment, read from the config.yaml its first seed ran with (not typed in)."""
    rows = []
    for fig, names in FIGURES.items():
        for name in names:
            run = next(r for r in runs if r.experiment == name)
            c = load_config(run.run_dir / "config.yaml")
            f, d = c.federation, c.data
            peft = c.peft.method + (f" r={c.peft.r}" if c.peft.method == "lora" else f" {c.peft.num_virtual_tokens} tokens")
            scheme = f.scheme + (f" ({c.clustering.method}, {c.clustering.num_clusters} clusters)" if f.scheme == "clustered" else "")
            layers = f", first {c.model.num_layers} layers" if c.model.num_layers else ""
            rows.append([LABELS[name] + f" ({fig})", c.model.name + layers, d.dataset + f" ({d.partition.method})", peft,
                         scheme, f"{f.num_clients} x {d.samples_per_client}", str(f.rounds), str(f.local_steps),
                         str(f.batch_size), f"{f.lr:g}", str(d.max_length), PAPER_HYPER[fig]])
    return rows


def cost_rows(runs: list[PaperRun]) -> list[list[str]]:
    """Per experiment: simulated wall time, uplink bytes and device energy of the whole run, and host time."""
    rows = []
    for names in FIGURES.values():
        for name in names:
            totals = [run_totals(r) for r in runs if r.experiment == name]
            col = {k: np.asarray([t[k] for t in totals]) for k in totals[0]}
            rows.append([f"{name} ({LABELS[name]})", fmt(col["sim_time_s"], 1), fmt(col["cum_bytes_up"] / 2**20, 2),
                         fmt(col["cum_bytes_down"] / 2**20, 2), fmt(col["cum_energy_j"], 1), fmt(col["wall_s"] / 60, 1)])
    return rows


def write_report(runs: list[PaperRun], out: Path, setup: dict[str, tuple[str, str]], quick: bool) -> Path:
    """Write ``out`` (markdown) and its plots beside it in ``<out stem>_plots/``."""
    plots = out.parent / f"{out.stem}_plots"
    figs = {
        "fig5a_loss.png": _band_plot(runs, FIGURES["fig5"], "train_loss", plots / "fig5a_loss.png", "fine-tuning loss"),
        "fig5b_ppl.png": _band_plot(runs, FIGURES["fig5"], "eval_perplexity", plots / "fig5b_ppl.png", "average perplexity"),
        "fig6a_loss.png": _band_plot(runs, FIGURES["fig6a"], "train_loss", plots / "fig6a_loss.png", "fine-tuning loss (generation)"),
        "fig6b_loss.png": _band_plot(runs, FIGURES["fig6b"], "train_loss", plots / "fig6b_loss.png", "fine-tuning loss (classification)"),
        "fig5_time.png": _band_plot(runs, FIGURES["fig5"], "eval_loss", plots / "fig5_time.png", "eval loss",
                                    x="sim_time_s", xlabel="simulated wall time (s), seed 0"),
        "fig5_bytes.png": _band_plot(runs, FIGURES["fig5"], "eval_loss", plots / "fig5_bytes.png", "eval loss",
                                     x="cum_bytes_up", xlabel="cumulative uplink bytes, seed 0"),
    }
    for fig in ("fig6a", "fig6b"):
        for x, xlabel in (("sim_time_s", "simulated wall time (s), seed 0"), ("cum_bytes_up", "cumulative uplink bytes, seed 0")):
            name = f"{fig}_{'time' if x == 'sim_time_s' else 'bytes'}.png"
            figs[name] = _band_plot(runs, FIGURES[fig], "client_eval_loss", plots / name,
                                    "held-out loss on each client's own data", x=x, xlabel=xlabel)
    seeds = sorted({r.seed for r in runs})
    lines = [
        "# Reproducing the paper's simulation results",
        "",
        f"Generated by `fedintel reproduce paper{' --quick' if quick else ''}` from the metrics stores of "
        f"{len(runs)} runs ({len(seeds)} seeds: {seeds}); every number below is read from those stores.",
        "Mean ± standard deviation over seeds." + (" **Quick mode**: a smoke-check budget, not the full runs." if quick else ""),
        "",
        "## Setup: what is the same and what differs",
        "",
        "| | paper | here |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in setup.items()]
    lines += ["", "Each experiment as it ran (read from the runs' `config.yaml`):", "",
              "| experiment | model | data (partition) | PEFT | scheme | users x samples | rounds | local steps "
              "| batch | lr | tokens | paper |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in hyperparameter_rows(runs)]
    lines += ["", "## Claims", "", "| claim | metric | measured | verdict |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in claims(runs)]
    lines += ["", "## Cost on the simulated edge network", "",
              "Whole-run totals on the simulated clock (the paper's cell: 100 m, 20 MHz, 23 dBm, -80 dBm noise) and the "
              "host time this machine spent (2 CPU cores).", "",
              "| experiment | simulated time (s) | uplink (MiB) | downlink (MiB) | device energy (J) | host time (min) |",
              "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in cost_rows(runs)]
    lines += ["", "## Curves", "", "Mean over seeds, shaded ± one standard deviation.", ""]
    lines += [f"![{name}]({plots.name}/{name})" for name in figs]
    lines += ["", "## Runs", "", "| experiment | seed | run directory |", "|---|---|---|"]
    lines += [f"| {r.experiment} | {r.seed} | `{_rel(r.run_dir, out.parent)}` |" for r in runs]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
