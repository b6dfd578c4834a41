"""The ``fedintel`` command line: run, resume, validate, plot, summary, datasets, models (and more)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

# Built-in models and datasets never touch a hub; HF_HUB_OFFLINE is the user's to set (Hugging Face ids
# and hf: datasets download through the standard cache unless it is 1).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from rich.console import Console  # noqa: E402

# Wide tables when the output is a file or pipe (rich would fold them at 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

# Extra sub-command groups register themselves here: fn(subparsers) -> None.
EXTENSIONS: list[str] = [
    "fedintel.reproduce.cli:add_reproduce_parser",
    "fedintel.inference.cli:add_infer_parser",
    "fedintel.engines.flower.cli:add_deploy_parser",
    "fedintel.unlearning.cli:add_forget_parser",
    "fedintel.serving.cli:add_serve_parser",
]


def _cmd_run(args: argparse.Namespace) -> int:
    from fedintel.config import load_config
    from fedintel.experiment import run_experiment
    from fedintel.tracking.progress import NullReporter, RichReporter

    cfg = load_config(args.config, args.set)
    if cfg.engine == "flower":
        err_console.print(
            f"{args.config} sets engine: flower, which runs on a Flower federation: use "
            f"`fedintel deploy local {args.config}` (SuperLink + SuperNodes on this machine) or "
            f"`fedintel deploy run {args.config} --superlink HOST:PORT --certs DIR` (see docs/flower.md)"
        )
        return 2
    reporter = NullReporter() if args.quiet else RichReporter()
    result = run_experiment(cfg, Path(args.run_dir) if args.run_dir else None, reporter)
    _finish(result)
    return 0


def _finish(result: object) -> None:
    from fedintel.summary import print_summary
    from fedintel.tracking.plots import plot_run

    run_dir = result.run_dir  # type: ignore[attr-defined]
    overview = result.overview  # type: ignore[attr-defined]
    print_summary(run_dir, console)
    plots = plot_run(run_dir, overview=overview is None)  # the run drew its overview itself
    console.print(f"run directory: [bold]{run_dir}[/] (metrics.db, checkpoints/, adapters/, "
                  f"{len(plots) + (overview is not None)} plots in plots/)")
    for path in [overview] if overview is not None else [p for p in plots if p.name == "overview.png"]:
        console.print(f"overview: [bold]{path}[/]")
    for name, path in result.adapters.items():  # type: ignore[attr-defined]
        console.print(f"adapter {name}: {path}  (PeftModel.from_pretrained(base, '{path}'))")


def _cmd_resume(args: argparse.Namespace) -> int:
    from fedintel.experiment import resume_experiment
    from fedintel.tracking.progress import NullReporter, RichReporter

    result = resume_experiment(Path(args.run_dir), NullReporter() if args.quiet else RichReporter(),
                               runtime_overrides=args.set)
    _finish(result)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from fedintel.config import load_config

    cfg = load_config(args.config, args.set)
    console.print(f"[green]ok[/]: {args.config} is a valid fedintel experiment ({cfg.name}: "
                  f"{cfg.federation.scheme}, {cfg.peft.method}, {cfg.model.name}, {cfg.data.name})")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedintel.tracking.plots import plot_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.db").is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.db; is it a fedintel run directory?")
    for p in plot_run(run_dir, Path(args.out) if args.out else None):
        console.print(str(p))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from fedintel.summary import print_summary

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.db").is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.db; is it a fedintel run directory?")
    print_summary(run_dir, console)
    overview = run_dir / "plots" / "overview.png"
    if overview.is_file():
        console.print(f"overview: [bold]{overview}[/]")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedintel.data.corpora import BUILTIN_DATASETS

    table = Table(title="built-in offline datasets (or dataset: json with data_files)")
    for col in ("name", "task", "what"):
        table.add_column(col)
    for name, (task, _, desc) in BUILTIN_DATASETS.items():
        table.add_row(name, task, desc)
    console.print(table)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedintel.models.loader import BUILTIN_MODELS

    table = Table(title="built-in offline models (or model.name: a local directory)")
    table.add_column("name")
    table.add_column("what")
    for name, desc in BUILTIN_MODELS.items():
        table.add_row(name, desc)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedintel",
        description="Federated fine-tuning and collaborative inference of language models at the network edge.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run an experiment file", description="Run an experiment described by a YAML file.")
    p.add_argument("config", help="experiment YAML (see examples/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set federation.rounds=3 (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default: output.dir/name-timestamp)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="continue a killed run from its last checkpoint",
                       description="Continue a run from its last checkpoint; it reaches the same result as an uninterrupted run.")
    p.add_argument("run_dir")
    p.add_argument("--set", action="append", default=[], metavar="runtime.KEY=VALUE",
                   help="continue on other hardware, e.g. --set runtime.device=cpu (runtime.* keys only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("validate", help="check an experiment file without running it",
                       description="Validate an experiment YAML; errors name the field.")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plot", help="draw PNG curves of a run", description="Draw the curves of a run as PNG files.")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default: RUN_DIR/plots)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("summary", help="print the per-round table of a run", description="Print a run's per-round metrics.")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("datasets", help="list built-in offline datasets", description="List built-in datasets.")
    p.set_defaults(func=_cmd_datasets)
    p = sub.add_parser("models", help="list built-in offline models", description="List built-in models.")
    p.set_defaults(func=_cmd_models)

    for ext in EXTENSIONS:
        mod_name, fn_name = ext.split(":")
        try:
            module = __import__(mod_name, fromlist=[fn_name])
        except ModuleNotFoundError as err:
            # a missing third-party package disables one command, loudly; a broken fedintel module is a bug
            if (err.name or "").split(".")[0] == "fedintel":
                raise
            err_console.print(f"[yellow]warning:[/] {mod_name} is unavailable (missing package {err.name!r}); "
                              "re-run `make install`")
            continue
        adder: Callable[[argparse._SubParsersAction], None] = getattr(module, fn_name)
        adder(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient checkpointing.*")
    for noisy in ("transformers", "datasets", "peft", "httpx", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from fedintel.errors import FedintelError, RunFailed

    try:
        return int(args.func(args) or 0)
    except (FedintelError, FileNotFoundError) as err:
        err_console.print(f"[red]error[/]: {err}", highlight=False)
        return 2 if not isinstance(err, RunFailed) else 1
    except KeyboardInterrupt:
        err_console.print("interrupted; resume with `fedintel resume RUN_DIR`")
        return 130


if __name__ == "__main__":
    sys.exit(main())
