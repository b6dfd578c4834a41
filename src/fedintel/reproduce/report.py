"""Write the reproduction report (markdown + PNG plots): each claim of the paper, our numbers, verdict.

Every number and every line of setup on the "here" side is read from the runs (metrics stores, ``config.yaml``)
or, for parameter counts, from the model itself; only the paper's own setup is typed in (:data:`PAPER_SETUP`).
Verdicts come from :mod:`fedintel.reproduce.verdicts` (paired across seeds). An experiment without finished runs
shows as "not run".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedintel.config import ExperimentConfig, ModelConfig, load_config  # noqa: E402
from fedintel.data.corpora import BUILTIN_DATASETS  # noqa: E402
from fedintel.errors import FedintelError  # noqa: E402
from fedintel.models.loader import load_base_model  # noqa: E402
from fedintel.reproduce.paper import (  # noqa: E402
    FIGURE_TITLES,
    FIGURES,
    LABELS,
    PaperRun,
    fmt,
    load_rounds,
    rounds_to_reach,
    run_totals,
    series,
)
from fedintel.reproduce.verdicts import Comparison, combine, compare  # noqa: E402
from fedintel.tracking.plots import save, style_axis  # noqa: E402
from fedintel.tracking.store import MetricsStore  # noqa: E402

NOT_RUN = "not run"
PAPER_SETUP = {  # section V of the paper; the "here" column beside it is read from the runs
    "base model": "LLaMA-7B (Fig. 5), GPT2-Small 124M (Fig. 6)",
    "fig5 data": "OpenOrca (instruction data)",
    "fig6a data": "title-to-abstract in 4 academic disciplines",
    "fig6b data": "SST-2, QNLI, QQP, Amazon polarity (four tasks that differ in kind)",
    "fig6b_tasks data": "SST-2, QNLI, QQP, Amazon polarity (four tasks that differ in kind)",
    "users, clusters": "8 users (Fig. 5); 16 users in 4 clusters (Fig. 6)",
    "samples, batch, lr, tokens": "1600 per user, batch 80, lr 2e-4, 128 tokens (Fig. 5)",
    "network": "100 m cell, 20 MHz, 23 dBm, -80 dBm noise",
}
PAPER_HYPER = {  # section V of the paper, per figure: what each "here" row is measured against
    "fig5": "8 users x 1600 samples, batch 80, lr 2e-4, 128 tokens, LLaMA-7B",
    "fig6a": "16 users in 4 clusters, GPT2-Small",
    "fig6b": "16 users in 4 clusters, GPT2-Small",
    "fig6b_tasks": "16 users in 4 clusters, GPT2-Small",
}
VERDICT_CELL = {"holds": "**holds**", "does not hold": "**does not hold**", "inconclusive": "**inconclusive**",
                NOT_RUN: NOT_RUN}


# -- reading the runs ---------------------------------------------------------------------------------
def _ran(runs: list[PaperRun], experiment: str) -> bool:
    return any(r.experiment == experiment for r in runs)


def _config(runs: list[PaperRun], experiment: str) -> ExperimentConfig:
    """The config the experiment's first seed ran with."""
    return load_config(next(r for r in runs if r.experiment == experiment).run_dir / "config.yaml")


def _final_by_seed(runs: list[PaperRun], experiment: str, metric: str, at: int = -1) -> dict[int, float]:
    """``metric`` of each seed's run at round index ``at`` of the rounds that logged it (last by default)."""
    out = {}
    for r in runs:
        if r.experiment == experiment:
            values = [rd[metric] for rd in load_rounds(r.run_dir) if metric in rd]
            if values:
                out[r.seed] = values[at]
    return out


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Values of the seeds both sides ran, in seed order (the same seed: the same split, devices and fading)."""
    seeds = sorted(a.keys() & b.keys())
    return np.asarray([a[s] for s in seeds]), np.asarray([b[s] for s in seeds])


def _values(by_seed: dict[int, float]) -> np.ndarray:
    return np.asarray([by_seed[s] for s in sorted(by_seed)])


@lru_cache(maxsize=8)
def _parameter_count(model_json: str) -> int | None:
    """Parameters of the base model as the runs loaded it (None when it cannot be loaded offline here)."""
    try:
        return load_base_model(ModelConfig.model_validate_json(model_json)).num_parameters
    except (FedintelError, OSError):
        return None


def parameter_count(model: ModelConfig) -> int | None:
    return _parameter_count(model.model_dump_json())


# -- claims ---------------------------------------------------------------------------------------------
def _stat_cells(parts: list[tuple[str, Comparison]]) -> list[str]:
    """The "ordering holds in", "paired p" and "effect d" cells of one or several comparisons."""
    def label(name: str, text: str) -> str:
        return f"{name}: {text}" if len(parts) > 1 else text

    wins = "; ".join(label(n, f"{c.wins}/{c.seeds}") for n, c in parts)
    p = "; ".join(label(n, "n/a" if math.isnan(c.p_value) else f"{c.p_value:.2g}") for n, c in parts)
    d = "; ".join(label(n, "n/a" if math.isnan(c.effect_size) else
                        ("inf" if math.isinf(c.effect_size) else f"{c.effect_size:.2f}")) for n, c in parts)
    return [wins, p, d]


def _row(claim: str, metric: str, measured: str, parts: list[tuple[str, Comparison]], verdict: str | None = None,
         missing: list[str] | None = None) -> list[str]:
    if not parts:
        return [claim, metric, NOT_RUN, "—", "—", "—", NOT_RUN]
    if missing:
        measured += f" ({', '.join(LABELS[m] for m in missing)}: {NOT_RUN})"
    verdict = verdict or combine([c for _, c in parts])
    return [claim, metric, measured, *_stat_cells(parts), VERDICT_CELL[verdict]]


def _fig5_claims(runs: list[PaperRun]) -> list[list[str]]:
    f5 = [e for e in FIGURES["fig5"] if _ran(runs, e)]
    missing = [e for e in FIGURES["fig5"] if e not in f5]
    others = [e for e in f5 if e != "fig5_lora"]
    lora = "fig5_lora" in f5
    loss = {e: _final_by_seed(runs, e, "train_loss") for e in f5}
    ppl0 = {e: _final_by_seed(runs, e, "eval_perplexity", at=0) for e in f5}
    ppl = {e: _final_by_seed(runs, e, "eval_perplexity") for e in f5}
    rows = [
        _row("Fig. 5a: FL-LoRA has a lower fine-tuning loss than FL-P-Tuning and FL-Prompt-Tuning",
             "final mean client training loss", "; ".join(f"{LABELS[e]} {fmt(_values(loss[e]))}" for e in f5),
             [(LABELS[e], compare(*_paired(loss[e], loss["fig5_lora"]))) for e in others] if lora else [],
             missing=missing),
        _row("Fig. 5b: average perplexity decreases with rounds for all schemes", "eval perplexity, round 0 -> last",
             "; ".join(f"{LABELS[e]} {_values(ppl0[e]).mean():.2f} -> {fmt(_values(ppl[e]), 2)}" for e in f5),
             [(LABELS[e], compare(*_paired(ppl0[e], ppl[e]))) for e in f5], missing=missing),
        _row("Fig. 5b: FL-LoRA reaches the lowest perplexity", "final eval perplexity",
             "; ".join(f"{LABELS[e]} {fmt(_values(ppl[e]), 2)}" for e in f5),
             [(LABELS[e], compare(*_paired(ppl[e], ppl["fig5_lora"]))) for e in others] if lora else [],
             missing=missing),
    ]
    return rows


def _cluster_claims(runs: list[PaperRun], fig: str) -> list[list[str]]:
    """Fig. 6 claims for one figure: CFL-LoRA converges faster and lower than FL-LoRA."""
    fl, cfl = FIGURES[fig]
    title, task = FIGURE_TITLES[fig], ("generation" if fig == "fig6a" else "classification")
    ran = _ran(runs, fl) and _ran(runs, cfl)
    rows = []
    for metric, what in (("train_loss", "fine-tuning (training) loss"),
                         ("client_eval_loss", "held-out loss on each client's own data")):
        claim = f"{title}: CFL-LoRA converges faster and lower than FL-LoRA ({task})"
        how = f"final {what}; round where CFL's seed mean reaches FL's final (faster: before the last round)"
        if not ran:
            rows.append(_row(claim, how, "", []))
            continue
        a, b = _final_by_seed(runs, fl, metric), _final_by_seed(runs, cfl, metric)
        c = compare(*_paired(a, b))
        reach = rounds_to_reach(runs, cfl, metric, float(_values(a).mean()))
        total = series(runs, fl, metric)[0][-1]
        reach_s = f"round {reach:.0f} of {total:.0f}" if math.isfinite(reach) else "never"
        verdict = c.verdict if c.verdict != "holds" or reach < total else "inconclusive"  # lower, not faster
        rows.append(_row(claim, how, f"FL {fmt(_values(a))}; CFL {fmt(_values(b))}; CFL reaches FL's final at {reach_s}",
                         [("", c)], verdict))
    if task == "classification":
        claim = f"{title} (accuracy view): CFL-LoRA classifies better than FL-LoRA"
        if ran:
            a, b = _final_by_seed(runs, fl, "client_eval_accuracy"), _final_by_seed(runs, cfl, "client_eval_accuracy")
            rows.append(_row(claim, "final accuracy on each client's own held-out data",
                             f"FL {fmt(_values(a))}; CFL {fmt(_values(b))}",
                             [("", compare(*_paired(a, b), lower_is_better=False))]))
        else:
            rows.append(_row(claim, "final accuracy on each client's own held-out data", "", []))
    claim = f"(setup check, {title}) similarity clustering recovers the 4 {task} domains"
    if _ran(runs, cfl):
        purity = _values(_final_by_seed(runs, cfl, "cluster_purity"))
        ok = int((purity > 0.99).sum())
        verdict = "holds" if ok == len(purity) else "does not hold"
        rows.append([claim, "cluster purity (holds: > 0.99 in every seed)", fmt(purity, 2),
                     f"{ok}/{len(purity)}", "—", "—", VERDICT_CELL[verdict]])
    else:
        rows.append(_row(claim, "cluster purity", "", []))
    return rows


def claims(runs: list[PaperRun]) -> list[list[str]]:
    """Rows: claim, metric, measured (mean ± std over seeds), seeds where the ordering holds, paired t-test p,
    effect size (Cohen's d_z), verdict."""
    rows = _fig5_claims(runs)
    for fig in ("fig6a", "fig6b_tasks", "fig6b"):
        rows += _cluster_claims(runs, fig)
    return rows


def contrast(runs: list[PaperRun]) -> str:
    """The Fig. 6b finding, written from the numbers: does clustering help where tasks differ and not where
    they agree?"""
    parts, helps, paired = [], {}, {}
    for fig, kind in (("fig6b_tasks", "four different tasks (tasks4)"), ("fig6b", "one task in four domains (VADER-4)")):
        fl, cfl = FIGURES[fig]
        if not (_ran(runs, fl) and _ran(runs, cfl)):
            parts.append(f"On {kind}: {NOT_RUN}.")
            continue
        la, lb = _paired(_final_by_seed(runs, fl, "client_eval_loss"), _final_by_seed(runs, cfl, "client_eval_loss"))
        aa, ab = _paired(_final_by_seed(runs, fl, "client_eval_accuracy"),
                         _final_by_seed(runs, cfl, "client_eval_accuracy"))
        loss_c, acc_c = compare(la, lb), compare(aa, ab, lower_is_better=False)
        purity = _values(_final_by_seed(runs, cfl, "cluster_purity"))
        helps[fig], paired[fig] = loss_c.verdict, loss_c.seeds
        parts.append(
            f"On {kind}, CFL's held-out loss on each client's own data is {lb.mean():.3f} against FL's {la.mean():.3f} "
            f"({loss_c.describe()}: {loss_c.verdict}) and its accuracy {ab.mean():.3f} against {aa.mean():.3f} "
            f"({acc_c.describe()}: {acc_c.verdict}); similarity clustering's purity is {purity.mean():.2f}.")
    if paired and min(paired.values()) < 2:
        parts.append("Too few paired seeds to call the contrast ("
                     + ", ".join(f"{FIGURE_TITLES[f]}: {n}" for f, n in paired.items()) + ").")
    elif len(helps) == 2:
        differ, agree = helps["fig6b_tasks"] == "holds", helps["fig6b"] == "holds"
        if differ and not agree:
            parts.append("The contrast is seen: clustering helps where the tasks differ and not where they agree.")
        elif differ and agree:
            parts.append("No contrast: clustering helps on both, so its gain here does not depend on tasks differing.")
        elif not differ and agree:
            parts.append("The opposite of the expected contrast: clustering helps on the same task but not where "
                         "the tasks differ.")
        elif helps["fig6b"] == "does not hold" and helps["fig6b_tasks"] != "does not hold":
            parts.append("Half of the contrast: clustering hurts where the tasks agree (the opposite ordering is "
                         "significant) and not where they differ, but its gain where they differ is not significant "
                         "at this budget, so the expectation that it helps there is not confirmed.")
        else:
            parts.append("No contrast: clustering does not measurably help on either, so the expectation that it "
                         "helps where tasks differ is not borne out at this budget.")
    return " ".join(parts)


# -- setup, read from the runs ------------------------------------------------------------------------------
def _figures_ran(runs: list[PaperRun]) -> dict[str, list[str]]:
    return {fig: [e for e in names if _ran(runs, e)] for fig, names in FIGURES.items()
            if any(_ran(runs, e) for e in names)}


def _network(cfg: ExperimentConfig) -> str:
    n = cfg.network
    if not n.enabled:
        return "not simulated"
    noise = f"{n.noise_psd_dbm_hz:g} dBm/Hz noise" if n.noise_psd_dbm_hz is not None else f"{n.noise_dbm:g} dBm noise"
    d = n.devices
    devices = ("explicit device profiles" if d.profiles else
               f"{d.distribution} device speeds (mean {d.mean_flops / 1e9:g} GFLOP/s, spread {d.spread:g})")
    return (f"{n.cell_radius_m:g} m cell, {n.bandwidth_hz / 1e6:g} MHz, {n.tx_power_dbm:g} dBm, {noise}; "
            f"{n.fading} fading, {n.shadowing_std_db:g} dB log-normal shadowing, {devices}")


def _data(cfg: ExperimentConfig) -> str:
    d = cfg.data
    if d.sources:
        return d.name + ": " + "; ".join(
            f"{s.domain} = {s.dataset}" + (f" ({s.subset})" if s.subset else "") + f" {s.split}" for s in d.sources)
    about = (BUILTIN_DATASETS[d.dataset][2] if d.dataset in BUILTIN_DATASETS else
             "read with datasets.load_dataset" if d.dataset.startswith("hf:") else f"files {d.data_files}")
    return f"{d.dataset}: {about}"


def _model(cfg: ExperimentConfig) -> str:
    n = parameter_count(cfg.model)
    size = f"{n / 1e6:.1f}M parameters as loaded" if n is not None else "parameter count unavailable offline"
    layers = f", first {cfg.model.num_layers} layers" if cfg.model.num_layers else ""
    return f"{cfg.model.name} ({size}{layers}, {cfg.model.task})"


def _by_figure(runs: list[PaperRun], describe: Callable[[list[ExperimentConfig]], str]) -> str:
    """``describe(configs of a figure's experiments)`` per figure; figures that read the same are merged."""
    groups: dict[str, list[str]] = {}
    for fig, names in _figures_ran(runs).items():
        groups.setdefault(describe([_config(runs, e) for e in names]), []).append(FIGURE_TITLES[fig])
    return "; ".join(f"{', '.join(figs)}: {text}" for text, figs in groups.items())


def _each(describe: Callable[[ExperimentConfig], str]) -> Callable[[list[ExperimentConfig]], str]:
    """Describe each config, keeping the distinct descriptions."""
    return lambda configs: "; ".join(dict.fromkeys(describe(c) for c in configs))


def _users(configs: list[ExperimentConfig]) -> str:
    users = "/".join(dict.fromkeys(str(c.federation.num_clients) for c in configs))
    clusters = [f"{c.clustering.num_clusters} clusters found by {c.clustering.method}"
                for c in configs if c.federation.scheme == "clustered"]
    return f"{users} users" + (f" (CFL: {', '.join(dict.fromkeys(clusters))})" if clusters else "")


def _budget(c: ExperimentConfig) -> str:
    f, d = c.federation, c.data
    return (f"{d.samples_per_client} per user, batch {f.batch_size}, lr {f.lr:g}, {d.max_length} tokens, "
            f"{f.rounds} rounds x {f.local_steps} local steps")


def setup_rows(runs: list[PaperRun]) -> list[list[str]]:
    """Paper against here; the "here" column read from the runs' configs (and the models' parameter counts)."""
    ran = _figures_ran(runs)
    rows = [["base model", PAPER_SETUP["base model"], _by_figure(runs, _each(_model))]]
    for fig in ran:
        rows.append([f"{FIGURE_TITLES[fig]} data", PAPER_SETUP[f"{fig} data"], _data(_config(runs, ran[fig][0]))])
    rows += [["users, clusters", PAPER_SETUP["users, clusters"], _by_figure(runs, _users)],
             ["samples, batch, lr, tokens", PAPER_SETUP["samples, batch, lr, tokens"], _by_figure(runs, _each(_budget))],
             ["network", PAPER_SETUP["network"], _by_figure(runs, _each(_network))]]
    return rows


def _peft(c: ExperimentConfig) -> str:
    p = c.peft
    if p.method == "lora":
        return f"lora r={p.r}"
    text = f"{p.method} {p.num_virtual_tokens} tokens"  # type: ignore[attr-defined]
    if getattr(p, "prefix_projection", False):
        text += f", MLP reparameterisation ({p.prefix_projection_hidden})"  # type: ignore[attr-defined]
    if getattr(p, "prefix_init_text", None):
        text += ", initialised from text"
    return text


def hyperparameter_rows(runs: list[PaperRun]) -> list[list[str]]:
    """One row per experiment, read from the config.yaml its first seed ran with (not typed in)."""
    rows = []
    for fig, names in FIGURES.items():
        for name in names:
            if not _ran(runs, name):
                rows.append([f"{LABELS[name]} ({fig})", NOT_RUN] + ["—"] * 9 + [PAPER_HYPER[fig]])
                continue
            c = _config(runs, name)
            f, d = c.federation, c.data
            scheme = f.scheme + (f" ({c.clustering.method}, {c.clustering.num_clusters} clusters)" if f.scheme == "clustered" else "")
            layers = f", first {c.model.num_layers} layers" if c.model.num_layers else ""
            rows.append([f"{LABELS[name]} ({fig})", c.model.name + layers, d.name + f" ({d.partition.method})",
                         _peft(c), scheme, f"{f.num_clients} x {d.samples_per_client}", str(f.rounds), str(f.local_steps),
                         str(f.batch_size), f"{f.lr:g}", str(d.max_length), PAPER_HYPER[fig]])
    return rows


def cost_rows(runs: list[PaperRun]) -> list[list[str]]:
    """Per experiment: simulated wall time, uplink bytes and device energy of the whole run, and host time."""
    rows = []
    for names in FIGURES.values():
        for name in names:
            totals = [run_totals(r) for r in runs if r.experiment == name]
            if not totals:
                rows.append([f"{name} ({LABELS[name]})", NOT_RUN] + ["—"] * 4)
                continue
            col = {k: np.asarray([t[k] for t in totals]) for k in totals[0]}
            rows.append([f"{name} ({LABELS[name]})", fmt(col["sim_time_s"], 1), fmt(col["cum_bytes_up"] / 2**20, 2),
                         fmt(col["cum_bytes_down"] / 2**20, 2), fmt(col["cum_energy_j"], 1), fmt(col["wall_s"] / 60, 1)])
    return rows


# -- plots and the document ---------------------------------------------------------------------------------
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


def _plots(runs: list[PaperRun], plots: Path) -> list[str]:
    """Draw every plot whose experiments ran; return their file names."""
    ran = _figures_ran(runs)
    specs: list[tuple[str, str, str, str, str, str]] = []  # name, figure, metric, ylabel, x, xlabel
    time_x, bytes_x = ("sim_time_s", "simulated wall time (s), first seed"), ("cum_bytes_up", "cumulative uplink bytes, first seed")
    specs += [("fig5a_loss.png", "fig5", "train_loss", "fine-tuning loss", "round", "round"),
              ("fig5b_ppl.png", "fig5", "eval_perplexity", "average perplexity", "round", "round"),
              ("fig5_time.png", "fig5", "eval_loss", "eval loss", *time_x),
              ("fig5_bytes.png", "fig5", "eval_loss", "eval loss", *bytes_x)]
    for fig in ("fig6a", "fig6b_tasks", "fig6b"):
        task = "generation" if fig == "fig6a" else "classification"
        specs += [(f"{fig}_loss.png", fig, "train_loss", f"fine-tuning loss ({task})", "round", "round"),
                  (f"{fig}_time.png", fig, "client_eval_loss", "held-out loss on each client's own data", *time_x),
                  (f"{fig}_bytes.png", fig, "client_eval_loss", "held-out loss on each client's own data", *bytes_x)]
    names = []
    for name, fig, metric, ylabel, x, xlabel in specs:
        if fig in ran:
            _band_plot(runs, ran[fig], metric, plots / name, ylabel, x=x, xlabel=xlabel)
            names.append(name)
    return names


def _rel(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def hardware_of(runs: list[PaperRun]) -> list[str]:
    """Where the runs computed (each distinct description with its number of runs), read from their stores."""
    seen: Counter[str] = Counter()
    for r in runs:
        with MetricsStore(r.run_dir / "metrics.db", read_only=True) as store:
            seen[store.info(r.run_dir.name).get("hardware", "not recorded (a run from before fedintel recorded it)")] += 1
    return [f"{h} ({n} run{'s' if n > 1 else ''})" for h, n in seen.most_common()]


def write_report(runs: list[PaperRun], out: Path, quick: bool, full: bool = False) -> Path:
    """Write ``out`` (markdown) and its plots beside it in ``<out stem>_plots/``. ``full``: the runs are the
    paper-scale set (``--full``), said in the report."""
    plots = out.parent / f"{out.stem}_plots"
    names = _plots(runs, plots)
    seeds = {fig: sorted({r.seed for r in runs if r.experiment in exps}) for fig, exps in FIGURES.items()}
    seeds_text = "; ".join(f"{FIGURE_TITLES[f]} {len(s)} ({s})" if s else f"{FIGURE_TITLES[f]} {NOT_RUN}"
                           for f, s in seeds.items())
    lines = [
        "# Reproducing the paper's simulation results",
        "",
        f"Generated by `fedintel reproduce paper{' --quick' if quick else ''}{' --full' if full else ''}` from the "
        f"metrics stores of {len(runs)} runs (seeds per figure: {seeds_text}); every number below is read from "
        "those stores.",
        "Mean ± standard deviation over seeds." + (" **Quick mode**: a smoke-check budget, not the full runs." if quick else ""),
        "",
        "**Set:** " + ("the paper-scale set (`benchmarks/paper/*_full.yaml`: the paper's models, data and settings)."
                       if full else "the scaled set that runs on a CPU (`benchmarks/paper/*.yaml`; the paper-scale set "
                       "is `fedintel reproduce paper --full`)."),
        "",
        "**Hardware** (recorded by each run): " + ("; ".join(hardware_of(runs)) or "no runs") + ".",
        "",
        "## Setup: what is the same and what differs",
        "",
        "The paper's column is its section V; ours is read from the runs' `config.yaml` (parameter counts from the "
        "models as the runs loaded them).",
        "",
    ]
    lines += _table(["", "paper", "here"], setup_rows(runs))
    lines += ["", "Each experiment as it ran (read from the runs' `config.yaml`):", ""]
    lines += _table(["experiment", "model", "data (partition)", "PEFT", "scheme", "users x samples", "rounds",
                     "local steps", "batch", "lr", "tokens", "paper"], hyperparameter_rows(runs))
    lines += ["", "## Claims", "",
              "Each comparison is paired by seed (the same seed gives both sides the same data split, devices and "
              "fading). A claim **holds** only when its ordering holds in every seed and a paired t-test across seeds "
              "rejects \"no difference\" at p < 0.05; **does not hold** when the opposite ordering is significant; "
              "otherwise it is **inconclusive** (within seed noise). The effect size is Cohen's d_z (mean paired "
              "difference over its standard deviation).", ""]
    lines += _table(["claim", "metric", "measured", "ordering holds in (seeds)", "paired t-test p", "effect size d",
                     "verdict"], claims(runs))
    lines += ["", "### Fig. 6b: different tasks against the same task", "", contrast(runs)]
    first = [_config(runs, names_[0]) for names_ in _figures_ran(runs).values()]
    cells = "; ".join(dict.fromkeys(_network(c) for c in first)) or NOT_RUN
    lines += ["", "## Cost on the simulated edge network", "",
              f"Whole-run totals on the simulated clock (the runs' network: {cells}) and the host time this machine "
              "spent.", ""]
    lines += _table(["experiment", "simulated time (s)", "uplink (MiB)", "downlink (MiB)", "device energy (J)",
                     "host time (min)"], cost_rows(runs))
    lines += ["", "## Curves", "", "Mean over seeds, shaded ± one standard deviation.", ""]
    lines += [f"![{name}]({plots.name}/{name})" for name in names]
    lines += ["", "## Runs", ""]
    lines += _table(["experiment", "seed", "run directory"],
                    [[r.experiment, str(r.seed), f"`{_rel(r.run_dir, out.parent)}`"] for r in runs])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
