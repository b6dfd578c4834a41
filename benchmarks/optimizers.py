"""Federated optimizers on non-IID clients (issue #19): rounds to a target loss and final loss, mean ± std.

Every registered algorithm (FedAvg, FedProx, SCAFFOLD, FedAvgM, FedAdam, FedYogi, FedAdagrad) runs R rounds
on two non-IID tasks, over 3 seeds:

* generation: SmolLM2-135M with LoRA on ``generation4``, one text domain per client (``by_domain``);
* classification: MiniLM-L6 on ``vader`` sentiment, labels split by Dirichlet(0.1) across clients, each class
  spread over the clients (``partition.draw: per_class``, as NIID-Bench and Flower Datasets draw it), so the
  clients' union keeps the pool's label balance and the held-out loss measures what the federation learned, not
  a prior that a few clients' draws tilted.

Each task also runs FedAvg on an iid split of the same pool ("fedavg, iid split"): the reference that shows what
the same budget learns without the skew.

The target loss of a task is 90 % of the starting eval loss (mean over seeds) unless ``--target`` is given: a
real step below the untrained model (for binary classification, ln 2 x 0.9 = 0.624), the same bar for every
algorithm. A run's "rounds to target" is the first round whose eval loss is at or below it. Prints a markdown table (with the uplink each algorithm sent: SCAFFOLD's control variates
double it) and writes ``benchmarks/out/optimizers[-quick]/optimizers.png`` (mean eval loss per round, band =
± std over seeds).

    python benchmarks/optimizers.py                  # full: the lead runs this one (hours on 2 cores)
    python benchmarks/optimizers.py --quick          # tiny-llama / tiny-bert, 2 rounds, 1 seed (~2 min): a smoke test
    python benchmarks/optimizers.py --rounds 10 --seeds 0 1 2 --only gen

Resumable: each (task, algorithm, seed) is one run directory named by a hash of its config under
``benchmarks/out/optimizers/runs``; a finished run is read back from its metrics store, an interrupted one is
started again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common
import numpy as np

# Server step sizes chosen for LoRA deltas of a few AdamW steps at lr ~3e-3 (about 1e-2 per coordinate);
# FedAvgM's eta = 1 - momentum keeps its steady-state step equal to FedAvg's.
ALGORITHMS: dict[str, dict] = {
    "fedavg": {},
    "fedprox": {"mu": 0.01},
    "scaffold": {"eta": 1.0},
    "fedavgm": {"momentum": 0.9, "eta": 0.1},
    "fedadam": {"eta": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"eta": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedadagrad": {"eta": 1e-2, "tau": 1e-3},
}


def task_configs(args: argparse.Namespace) -> dict[str, dict]:
    """The two non-IID tasks as config mappings (without optimizer and seed)."""
    clients = 4 if args.quick else 8
    # Generation is ~10x the compute of MiniLM classification per sample, so it runs smaller on 2 CPU cores:
    # one client per domain (4), 32-token samples, 2 local steps (about 1.5 min per run instead of 15).
    gen = {
        "model": {"name": "tiny-llama" if args.quick else "smollm2-135m"},
        "data": {"dataset": "generation4", "max_length": 32,
                 "samples_per_client": 16 if args.quick else 32, "global_eval_samples": 16 if args.quick else 48,
                 "partition": {"method": "by_domain"}},
        "federation": {"rounds": args.rounds, "num_clients": 4, "clients_per_round": 4,
                       "local_steps": 2,
                       "batch_size": 8, "micro_batch_size": 8, "lr": 3e-3},
        "eval": {"max_samples": 16 if args.quick else 48, "per_client": False},
    }
    cls = {
        "model": {"name": "tiny-bert" if args.quick else "minilm-l6", "task": "classification", "num_labels": 2},
        "data": {"dataset": "vader", "max_length": 32 if args.quick else 48,
                 "samples_per_client": 16 if args.quick else 64, "global_eval_samples": 16 if args.quick else 128,
                 "partition": {"method": "dirichlet", "alpha": 0.1, "draw": "per_class"}},
        "federation": {"rounds": args.cls_rounds, "num_clients": clients, "clients_per_round": clients,
                       "local_steps": 2,
                       # 1e-2: at 3e-3 even an iid split stays a constant predictor for 11 of 12 rounds
                       "batch_size": 8, "micro_batch_size": 8, "lr": 1e-2},
        "eval": {"max_samples": 16 if args.quick else 128, "per_client": False},
    }
    return {"gen": gen, "cls": cls}


IID_REFERENCE = "fedavg, iid split"
TARGET_FRACTION = 0.9
TASK_TITLES = {"gen": "generation4 by domain", "cls": "vader Dirichlet(0.1) over classes"}


def run(raw: dict, name: str, runs_dir: Path) -> list[dict]:
    """Per-round metrics of ``raw``, reusing a finished run of the same config (same hash)."""
    return _common.cached_run(raw, name, runs_dir)


def curve(rounds: list[dict], key: str = "eval_loss") -> list[float]:
    return [r[key] for r in rounds if key in r]


def rounds_to(losses: list[float], target: float) -> int | None:
    return next((i for i, v in enumerate(losses) if v <= target), None)


def mean_std(xs: list[float], digits: int = 4) -> str:
    if not xs:
        return "—"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-llama / tiny-bert, 2 rounds, 1 seed (a smoke test)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the generation runs (default 8; quick 2)")
    ap.add_argument("--cls-rounds", type=int, default=None, help="rounds of the classification runs (default 12)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="seeds (default 0 1 2; quick 0)")
    ap.add_argument("--only", choices=["gen", "cls"], nargs="*")
    ap.add_argument("--algorithms", choices=list(ALGORITHMS), nargs="*")
    ap.add_argument("--reference", choices=["gen", "cls"], nargs="*", default=None,
                    help="tasks that get the iid FedAvg reference row (default: all; none with no value)")
    ap.add_argument("--target", type=float, default=None,
                    help=f"target eval loss (default: {TARGET_FRACTION * 100:.0f} %% of the starting eval loss)")
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 8)
    args.cls_rounds = args.cls_rounds or (2 if args.quick else 12)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    out = _common.OUT / ("optimizers-quick" if args.quick else "optimizers")
    runs_dir = out / "runs"
    algos = args.algorithms or list(ALGORITHMS)
    tasks = {k: v for k, v in task_configs(args).items() if k in (args.only or ["gen", "cls"])}

    curves: dict[str, dict[str, list[list[float]]]] = {}
    accuracy_curves: dict[str, dict[str, list[list[float]]]] = {}  # classification only
    finals: dict[str, dict[str, list[dict]]] = {}
    for task, raw in tasks.items():
        curves[task], finals[task] = {}, {}
        reference = "fedavg" in algos and (args.reference is None or task in args.reference)
        for algo in algos + ([IID_REFERENCE] if reference else []):
            curves[task][algo], finals[task][algo] = [], []
            iid = algo == IID_REFERENCE
            for seed in seeds:
                data = {**raw["data"], "partition": {"method": "iid"}} if iid else raw["data"]
                cfg = {**raw, "data": data, "federation": {**raw["federation"], "seed": seed},
                       "optimizer": {"name": "fedavg" if iid else algo, **({} if iid else ALGORITHMS[algo])},
                       "output": {"dir": str(runs_dir), "save_adapter": False}}
                rounds = run(cfg, f"{task}-{'fedavg-iid' if iid else algo}-s{seed}", runs_dir)
                curves[task][algo].append(curve(rounds))
                if curve(rounds, "eval_accuracy"):
                    accuracy_curves.setdefault(task, {}).setdefault(algo, []).append(curve(rounds, "eval_accuracy"))
                finals[task][algo].append(rounds[-1])

    print(f"Federated optimizers on non-IID clients; seeds {seeds}; "
          f"{'QUICK smoke run (tiny random models): numbers mean nothing' if args.quick else 'full run'}\n")
    for task, by_algo in curves.items():
        start = float(np.mean([c[0] for cs in by_algo.values() for c in cs]))
        target = args.target if args.target is not None else TARGET_FRACTION * start
        accuracy = "eval_accuracy" in finals[task][next(iter(by_algo))][0]
        rows = []
        for algo, cs in by_algo.items():
            reached = [r for r in (rounds_to(c, target) for c in cs) if r is not None]
            row = [algo, (mean_std([float(r) for r in reached], 1) if reached else "not reached")
                   + f" ({len(reached)}/{len(cs)})", mean_std([c[-1] for c in cs]), mean_std([min(c) for c in cs])]
            if accuracy:
                row.append(mean_std([f["eval_accuracy"] for f in finals[task][algo]], 3))
            row.append(f"{np.mean([f['cum_bytes_up'] for f in finals[task][algo]]) / 2**20:.1f}")
            rows.append(row)
        rounds = len(next(iter(by_algo.values()))[0]) - 1
        print(f"### {TASK_TITLES[task]}, {rounds} rounds, start eval loss {start:.4f}, target {target:.4f}\n")
        headers = ["optimizer", "rounds to target (seeds reached)", "final eval loss", "best eval loss"]
        headers += ["final accuracy"] if accuracy else []
        print(_common.table(headers + ["uplink MiB"], rows) + "\n")
    path = plot(curves, accuracy_curves, out / "optimizers.png")
    print(f"plot: {path}")


def plot(curves: dict[str, dict[str, list[list[float]]]], accuracy: dict[str, dict[str, list[list[float]]]],
         path: Path) -> Path:
    """Mean ± std over seeds per round: every task's eval loss, then each classification task's accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(task, by_algo, "eval loss") for task, by_algo in curves.items()]
    panels += [(task, by_algo, "eval accuracy") for task, by_algo in accuracy.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1.6, 4), squeeze=False)
    for ax, (task, by_algo, what) in zip(axes[0], panels, strict=True):
        for k, (algo, cs) in enumerate(by_algo.items()):
            n = min(len(c) for c in cs)
            arr = np.array([c[:n] for c in cs])
            x = np.arange(n)
            mean, std = arr.mean(axis=0), arr.std(axis=0)
            # the iid reference is not a competitor: black and dashed
            color, style = ("black", "--") if algo == IID_REFERENCE else (f"C{k}", "-")
            ax.plot(x, mean, marker="o", ms=3, label=algo, color=color, linestyle=style)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=color)
        ax.set(title=TASK_TITLES[task], xlabel="round", ylabel=what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # one legend for both panels (the same optimizers, the same colours), beside them: never over a curve
    legend: dict[str, object] = {}  # every panel's entries once (the iid reference may be in some panels only)
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
