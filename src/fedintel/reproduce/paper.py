"""Reproduce the paper's section V (Fig. 5 and Fig. 6) on real models and data that run here.

Every configuration runs with several seeds (:data:`SEEDS`, per figure: more where a run is cheap); each run is
an ordinary fedintel run directory (resumable, skipped when already finished, here or in the published copies).
The report reads every number from the runs' metrics stores.
"""

from __future__ import annotations

import logging
import math
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedintel.config import ExperimentConfig, load_config
from fedintel.errors import ConfigError
from fedintel.experiment import resume_experiment, run_experiment
from fedintel.tracking.store import MetricsStore, finished_rounds

log = logging.getLogger(__name__)

FIGURES = {
    "fig5": ["fig5_lora", "fig5_prefix", "fig5_prefix_faithful", "fig5_prompt"],
    "fig6a": ["fig6a_fl", "fig6a_cfl"],
    "fig6b": ["fig6b_fl", "fig6b_cfl"],  # VADER-4: four domains of one task (sentiment)
    "fig6b_tasks": ["fig6b_tasks_fl", "fig6b_tasks_cfl"],  # tasks4: four tasks that differ in kind
}
FIGURE_TITLES = {"fig5": "Fig. 5", "fig6a": "Fig. 6a", "fig6b": "Fig. 6b (same task)",
                 "fig6b_tasks": "Fig. 6b (different tasks)"}
LABELS = {
    "fig5_lora": "FL-LoRA", "fig5_prefix": "FL-P-Tuning", "fig5_prefix_faithful": "FL-P-Tuning (Li & Liang)",
    "fig5_prompt": "FL-Prompt-Tuning",
    "fig6a_fl": "FL-LoRA", "fig6a_cfl": "CFL-LoRA", "fig6b_fl": "FL-LoRA", "fig6b_cfl": "CFL-LoRA",
    "fig6b_tasks_fl": "FL-LoRA", "fig6b_tasks_cfl": "CFL-LoRA",
}
# seeds per figure: a verdict needs more seeds than noise allows; 5 where a run is cheap (MiniLM classification,
# ~2 min), 3 for SmolLM2 generation (~5 min a run on 2 cores)
SEEDS = {"fig5": 3, "fig6a": 3, "fig6b": 5, "fig6b_tasks": 5}
QUICK_SEEDS = 2
# --quick: the same experiments, smaller, so the whole reproduction is a <15-minute smoke check.
QUICK: dict[str, list[str]] = {
    "fig5": ["federation.rounds=2", "data.samples_per_client=16", "data.max_length=32", "federation.local_steps=1",
             "federation.batch_size=8", "eval.max_samples=8", "data.global_eval_samples=8"],
    "fig6a": ["federation.rounds=2", "data.samples_per_client=10", "data.max_length=32", "federation.local_steps=1",
              "eval.max_samples=4", "data.global_eval_samples=8"],
    "fig6b": ["federation.rounds=2", "data.samples_per_client=20", "data.max_length=32", "federation.local_steps=2",
              "eval.max_samples=8", "data.global_eval_samples=32"],
}
QUICK["fig6b_tasks"] = QUICK["fig6b"]
DEFAULT_EXPERIMENTS = Path(__file__).resolve().parents[3] / "benchmarks" / "paper"
FULL_SUFFIX = "_full"  # the paper-scale set: benchmarks/paper/<experiment>_full.yaml (--full)


@dataclass
class PaperRun:
    experiment: str
    seed: int
    run_dir: Path


def figure_of(experiment: str) -> str:
    return next(fig for fig, names in FIGURES.items() if experiment in names)


def seed_counts(quick: bool = False, seeds: int | None = None) -> dict[str, int]:
    """Seeds per figure: ``seeds`` for every figure when given, else :data:`SEEDS` (or 2 each with ``quick``)."""
    return {fig: seeds if seeds else (QUICK_SEEDS if quick else SEEDS[fig]) for fig in FIGURES}


def select_experiments(only: list[str] | None) -> list[str]:
    """The experiments ``--only`` names (figures such as ``fig6b_tasks`` or experiments such as ``fig5_lora``)."""
    every = [name for names in FIGURES.values() for name in names]
    if not only:
        return every
    unknown = [w for w in only if w not in FIGURES and w not in every]
    if unknown:
        raise ConfigError(f"--only: unknown {', '.join(unknown)}; choose figures ({', '.join(FIGURES)}) "
                         f"or experiments ({', '.join(every)})")
    return [name for name in every if name in only or figure_of(name) in only]


def full_set(exp_dir: Path, experiments: list[str]) -> list[str]:
    """The experiments that have a paper-scale file (Fig. 6b on one task is this project's own control, not the
    paper's, so it has none)."""
    return [e for e in experiments if (exp_dir / f"{e}{FULL_SUFFIX}.yaml").is_file()]


def experiment_configs(exp_dir: Path, quick: bool, overrides: list[str],
                       experiments: list[str] | None = None, full: bool = False) -> dict[str, ExperimentConfig]:
    """The configs of the experiments (default: every one), with the quick-mode and user overrides applied;
    ``full``: the paper-scale set (``<name>_full.yaml``)."""
    out = {}
    for name in experiments or select_experiments(None):
        path = exp_dir / f"{name}{FULL_SUFFIX if full else ''}.yaml"
        out[name] = load_config(path, (QUICK[figure_of(name)] if quick else []) + overrides)
    return out


def run_all(
    exp_dir: Path, runs_dir: Path, seeds: dict[str, int], quick: bool, overrides: list[str],
    on_run: Callable[[str, int, str], None] | None = None, only: list[str] | None = None,
    published: Path | None = None, full: bool = False,
) -> list[PaperRun]:
    """Run (or resume, or skip) every selected experiment x seed; return where each run lives (``full``: the
    paper-scale set).

    A run already finished in ``published`` (the committed small copies) with the very config it would run now is
    not run again: that copy is returned.
    """
    experiments = full_set(exp_dir, select_experiments(only)) if full else select_experiments(only)
    configs = experiment_configs(exp_dir, quick, overrides, experiments, full)
    runs = [r for r in paper_runs(runs_dir, seeds) if r.experiment in experiments]
    for i, run in enumerate(runs):
        cfg = configs[run.experiment]
        seeded = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"seed": run.seed})})
        copy = published / run.run_dir.name if published else None
        if finished_rounds(run.run_dir) is not None:
            status = "done already"
        elif (run.run_dir / "metrics.db").is_file():
            resume_experiment(run.run_dir)
            status = "resumed"
        elif copy is not None and _finished_with(copy, seeded):
            runs[i] = PaperRun(run.experiment, run.seed, copy)
            status = "published already"
        else:
            run_experiment(seeded, run.run_dir)
            status = "ran"
        if on_run:
            on_run(run.experiment, run.seed, status)
    return runs


def _finished_with(run_dir: Path, cfg: ExperimentConfig) -> bool:
    """Did the run in ``run_dir`` finish with exactly ``cfg`` (not, say, a --quick variant of it)?"""
    if finished_rounds(run_dir) is None or not (run_dir / "config.yaml").is_file():
        return False
    return load_config(run_dir / "config.yaml").model_dump(mode="json") == cfg.model_dump(mode="json")


def paper_runs(runs_dir: Path, seeds: dict[str, int]) -> list[PaperRun]:
    """Every experiment x seed (``seeds``: how many per figure) and the directory its run lives in
    (``<runs_dir>/<experiment>-s<seed>``); seed by seed within a figure, so an interrupted reproduction already
    holds paired runs to compare."""
    return [PaperRun(name, seed, runs_dir / f"{name}-s{seed}")
            for fig, names in FIGURES.items() for seed in range(seeds[fig]) for name in names]


# -- reading results ---------------------------------------------------------------------------------
def load_rounds(run_dir: Path) -> list[dict[str, float]]:
    with MetricsStore(run_dir / "metrics.db", read_only=True) as store:
        return store.rounds(store.run_ids()[-1])


def series(runs: list[PaperRun], experiment: str, metric: str, x: str = "round") -> tuple[np.ndarray, np.ndarray]:
    """Per-round values of ``metric`` for every seed: (x values of the first seed, [seeds, rounds])."""
    rows = [load_rounds(r.run_dir) for r in runs if r.experiment == experiment]
    values = [[rd[metric] for rd in rs if metric in rd] for rs in rows]
    n = min(len(v) for v in values)
    xs = [rd[x] for rd in rows[0] if metric in rd][:n]
    return np.asarray(xs, dtype=float), np.asarray([v[:n] for v in values], dtype=float)


def run_totals(run: PaperRun) -> dict[str, float]:
    """Whole-run costs from the last round: simulated time, uplink/downlink bytes, device energy, host wall time."""
    rows = load_rounds(run.run_dir)
    last = rows[-1]
    return {
        "sim_time_s": last.get("sim_time_s", math.nan), "cum_bytes_up": last.get("cum_bytes_up", math.nan),
        "cum_bytes_down": last.get("cum_bytes_down", math.nan), "cum_energy_j": last.get("cum_energy_j", math.nan),
        "wall_s": float(sum(r.get("wall_s", 0.0) for r in rows)),
    }


def publish(runs: list[PaperRun], dest: Path) -> list[PaperRun]:
    """Copy each run's metrics store and config to ``dest/<run name>/`` (small files a report can be rebuilt from,
    without the checkpoints); return the runs pointing at the copies."""
    out = []
    for r in runs:
        target = dest / r.run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        if r.run_dir.resolve() != target.resolve():
            shutil.copy2(r.run_dir / "config.yaml", target / "config.yaml")
            # SQLite's backup API, not a file copy: the store runs in WAL mode, so the .db file alone may lag
            (target / "metrics.db").unlink(missing_ok=True)
            with closing(sqlite3.connect(r.run_dir / "metrics.db")) as src, \
                    closing(sqlite3.connect(target / "metrics.db")) as dst:
                src.backup(dst)
        out.append(PaperRun(r.experiment, r.seed, target))
    return out


def existing_runs(runs_dir: Path, seeds: dict[str, int]) -> list[PaperRun]:
    """The finished runs already in ``runs_dir`` (for rebuilding a report without running anything); the report
    shows the experiments without any as not run."""
    return [r for r in paper_runs(runs_dir, seeds) if finished_rounds(r.run_dir) is not None]


def final(runs: list[PaperRun], experiment: str, metric: str) -> np.ndarray:
    return series(runs, experiment, metric)[1][:, -1]


def fmt(values: np.ndarray, digits: int = 3) -> str:
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}"


def rounds_to_reach(runs: list[PaperRun], experiment: str, metric: str, target: float) -> float:
    """First round where the seed-mean of ``metric`` is at or below ``target`` (inf if never)."""
    xs, ys = series(runs, experiment, metric)
    mean = ys.mean(axis=0)
    hits = [x for x, y in zip(xs, mean, strict=True) if x > 0 and y <= target]
    return float(hits[0]) if hits else math.inf
