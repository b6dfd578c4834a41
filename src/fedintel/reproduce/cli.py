"""``fedintel reproduce paper``: run every experiment of the paper reproduction and write the report."""

from __future__ import annotations

import argparse
from pathlib import Path

SETUP = {
    "base model": ("LLaMA-7B (Fig. 5), GPT2-Small 124M (Fig. 6)",
                   "SmolLM2-135M-Instruct (134.5M, Llama architecture) for generation; all-MiniLM-L6-v2 "
                   "(22.7M encoder) for classification: the largest real pretrained models that install offline "
                   "and train on 2 CPU cores"),
    "Fig. 5 data": ("OpenOrca (instruction data)", "chatterbot-corpus English Q/A dialogues (instruction-style)"),
    "Fig. 6a data": ("title-to-abstract in 4 academic disciplines", "4 text domains: Bible, fortunes, FOLDOC+Jargon "
                     "definitions, dialogue"),
    "Fig. 6b data": ("SST-2, QNLI, QQP, Amazon polarity", "VADER human-rated sentiment: tweets, movie reviews "
                     "(Pang & Lee, SST-2's source), Amazon reviews, NYT editorials"),
    "users, clusters": ("8 (Fig. 5); 16 users in 4 clusters (Fig. 6)", "same; clusters found from update similarity"),
    "samples, batch, lr, tokens": ("1600 per user, 80, 2e-4, 128 (Fig. 5)", "the table below, from each run's config: "
                                   "fewer samples, rounds and smaller batches so 21 runs of a 135M model fit 2 CPU cores"),
    "network": ("100 m cell, 20 MHz, 23 dBm, -80 dBm noise", "same (fedintel's defaults), plus Rayleigh fading, "
                "log-normal shadowing and heterogeneous device speeds for the simulated clock"),
}


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce the paper's results (Fig. 5, Fig. 6) and write a report",
                       description="Reproduce published results with one command.")
    rs = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = rs.add_parser("paper", help="Fig. 5 (LoRA vs prefix vs prompt) and Fig. 6 (CFL vs FL), several seeds",
                      description="Run every experiment of benchmarks/paper/ for several seeds (resumable: finished "
                                  "runs are skipped, interrupted ones resumed) and write docs/results.md.")
    q.add_argument("--quick", action="store_true", help="smaller runs (a smoke check, < 15 minutes on 2 cores)")
    q.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3, or 2 with --quick)")
    q.add_argument("--experiments", default=None, help="directory of the experiment YAMLs (default: benchmarks/paper)")
    q.add_argument("--runs-dir", default=None, help="where runs go (default: runs/paper or runs/paper-quick)")
    q.add_argument("--out", default="docs/results.md", help="report path (default: docs/results.md)")
    q.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the report from finished runs (default: the stores published beside "
                        "the report, e.g. docs/results_runs/)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every experiment (e.g. --set federation.rounds=5)")
    q.set_defaults(func=_cmd_paper)


def _cmd_paper(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedintel.reproduce.paper import DEFAULT_EXPERIMENTS, FIGURES, existing_runs, publish, run_all
    from fedintel.reproduce.report import write_report

    console = Console()
    seeds = list(range(args.seeds if args.seeds else (2 if args.quick else 3)))
    exp_dir = Path(args.experiments) if args.experiments else DEFAULT_EXPERIMENTS
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"--experiments: {exp_dir} is not a directory of experiment YAMLs")
    out = Path(args.out)
    published = out.parent / f"{out.stem}_runs"
    if args.report_only:
        runs = existing_runs(Path(args.runs_dir) if args.runs_dir else published, seeds)
        write_report(runs, out, SETUP, args.quick)
        console.print(f"report: [bold]{out}[/] rebuilt from {len(runs)} finished runs")
        return 0
    runs_dir = Path(args.runs_dir or ("runs/paper-quick" if args.quick else "runs/paper"))
    total = sum(len(v) for v in FIGURES.values()) * len(seeds)
    with Progress(TextColumn("[bold]paper runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("runs", total=total, info="")
        runs = run_all(exp_dir, runs_dir, seeds, args.quick, args.set,
                       on_run=lambda name, seed, status: progress.update(task, advance=1, info=f"{name} seed {seed}: {status}"))
    # the report reads (and links) small copies of each store, so it can be rebuilt and committed without checkpoints
    runs = publish(runs, published)
    write_report(runs, out, SETUP, args.quick)
    console.print(f"report: [bold]{out}[/] (plots in {out.parent / (out.stem + '_plots')}, stores in {published})")
    return 0
