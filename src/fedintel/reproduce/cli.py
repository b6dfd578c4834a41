"""``fedintel reproduce paper``: run every experiment of the paper reproduction and write the report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce the paper's results (Fig. 5, Fig. 6) and write a report",
                       description="Reproduce published results with one command.")
    rs = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = rs.add_parser("paper", help="Fig. 5 (LoRA vs prefix vs prompt) and Fig. 6 (CFL vs FL), several seeds",
                      description="Run every experiment of benchmarks/paper/ for several seeds (resumable: finished "
                                  "runs are skipped, interrupted ones resumed) and write docs/results.md.")
    q.add_argument("--quick", action="store_true", help="smaller runs (a smoke check, < 15 minutes on 2 cores)")
    q.add_argument("--full", action="store_true",
                   help="the paper-scale set (benchmarks/paper/*_full.yaml: the paper's models, data and settings; "
                        "needs an accelerator and the Hugging Face hub or its cache); runs go to runs/paper-full "
                        "and the report to docs/results_full.md")
    q.add_argument("--seeds", type=int, default=None,
                   help="number of seeds for every figure (default: 5 for the MiniLM classification figures, 3 for "
                        "the SmolLM2 generation ones; 2 with --quick)")
    q.add_argument("--only", action="append", default=None, metavar="FIG",
                   help="run only this figure (fig5, fig6a, fig6b, fig6b_tasks) or experiment (e.g. fig5_lora); "
                        "repeatable; the report still covers every finished run")
    q.add_argument("--experiments", default=None, help="directory of the experiment YAMLs (default: benchmarks/paper)")
    q.add_argument("--runs-dir", default=None, help="where runs go (default: runs/paper or runs/paper-quick)")
    q.add_argument("--out", default=None, help="report path (default: docs/results.md; --full: docs/results_full.md)")
    q.add_argument("--check", action="store_true",
                   help="run nothing: list the hub models and datasets the selected experiments need, and whether each "
                        "is cached or the hub answers (exit status 2 when one is missing)")
    q.add_argument("--skip-check", action="store_true",
                   help="start the runs even when a hub model or dataset seems unreachable (the check runs by default "
                        "before any run)")
    q.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the report from finished runs (default: the stores published beside "
                        "the report, e.g. docs/results_runs/)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every experiment (e.g. --set federation.rounds=5)")
    q.set_defaults(func=_cmd_paper)


def _cmd_paper(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedintel.reproduce.paper import (
        DEFAULT_EXPERIMENTS,
        FIGURES,
        existing_runs,
        full_set,
        publish,
        run_all,
        seed_counts,
        select_experiments,
    )
    from fedintel.reproduce.report import write_report

    console = Console()
    if args.quick and args.full:
        from fedintel.errors import ConfigError

        raise ConfigError("--quick and --full: choose one (the smoke check or the paper-scale set)")
    seeds = seed_counts(args.quick, args.seeds)
    exp_dir = Path(args.experiments) if args.experiments else DEFAULT_EXPERIMENTS
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"--experiments: {exp_dir} is not a directory of experiment YAMLs")
    out = Path(args.out or ("docs/results_full.md" if args.full else "docs/results.md"))
    published = out.parent / f"{out.stem}_runs"
    if args.report_only:
        runs = existing_runs(Path(args.runs_dir) if args.runs_dir else published, seeds)
        write_report(runs, out, args.quick, args.full)
        console.print(f"report: [bold]{out}[/] rebuilt from {len(runs)} finished runs")
        return 0
    runs_dir = Path(args.runs_dir or ("runs/paper-quick" if args.quick else "runs/paper-full" if args.full else
                                      "runs/paper"))
    experiments = full_set(exp_dir, select_experiments(args.only)) if args.full else select_experiments(args.only)
    if args.check or not args.skip_check:
        # before any run uses the accelerator: can every hub model and dataset be read?
        from fedintel.reproduce.paper import experiment_configs
        from fedintel.reproduce.preflight import check, missing_message

        resources = check(experiment_configs(exp_dir, args.quick, args.set, experiments, args.full))
        if args.check:
            _print_resources(console, resources)
        problem = missing_message(resources)
        if problem:
            from fedintel.cli import err_console

            err_console.print(f"[red]error[/]: {problem}", highlight=False)
            return 2
        if args.check:
            return 0
    total = sum(seeds[fig] for fig, names in FIGURES.items() for name in names if name in experiments)
    with Progress(TextColumn("[bold]paper runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("runs", total=total, info="")
        runs = run_all(exp_dir, runs_dir, seeds, args.quick, args.set, only=args.only, published=published,
                       full=args.full,
                       on_run=lambda name, seed, status: progress.update(task, advance=1, info=f"{name} seed {seed}: {status}"))
    # the report reads (and links) small copies of each store, so it can be rebuilt and committed without
    # checkpoints; it covers every finished run there, not only this invocation's
    publish(runs, published)
    finished = existing_runs(published, seeds)
    write_report(finished, out, args.quick, args.full)
    console.print(f"report: [bold]{out}[/] (plots in {out.parent / (out.stem + '_plots')}, stores in {published})")
    return 0



def _print_resources(console: object, resources: list) -> None:
    from rich.table import Table

    table = Table(title="hub models and datasets of the selected experiments")
    for col in ("kind", "id", "status", "used by"):
        table.add_column(col)
    words = {"cached": "[green]cached[/]", "hub": "hub (downloads on first use)", "missing": "[red]missing[/]"}
    for r in resources:
        table.add_row(r.kind, r.repo_id, words[r.status], ", ".join(r.used_by))
    if not resources:
        table.add_row("-", "none: built-in models and packaged data only", "[green]ready[/]", "")
    console.print(table)  # type: ignore[attr-defined]
