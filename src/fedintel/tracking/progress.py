"""Progress reporting: library code calls a :class:`Reporter`; the CLI supplies a rich one."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, total_rounds: int, first_round: int, clients_per_round: int) -> None: ...
    def client_done(self, round_idx: int, client_id: int, train_loss: float) -> None: ...
    def round_done(self, round_idx: int, metrics: dict[str, float]) -> None: ...
    def stop(self) -> None: ...


class NullReporter:
    """Reports nothing (library use, tests)."""

    def start(self, total_rounds: int, first_round: int, clients_per_round: int) -> None:
        pass

    def client_done(self, round_idx: int, client_id: int, train_loss: float) -> None:
        pass

    def round_done(self, round_idx: int, metrics: dict[str, float]) -> None:
        pass

    def stop(self) -> None:
        pass


class RichReporter:
    """Two rich progress bars: rounds, and clients within the current round, with the latest losses."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        )
        self.rounds_task = None
        self.clients_task = None

    def start(self, total_rounds: int, first_round: int, clients_per_round: int) -> None:
        self.progress.start()
        self.rounds_task = self.progress.add_task("rounds", total=total_rounds, completed=first_round - 1, info="")
        self.clients_task = self.progress.add_task("clients", total=clients_per_round, info="")

    def client_done(self, round_idx: int, client_id: int, train_loss: float) -> None:
        self.progress.update(self.clients_task, advance=1, info=f"client {client_id} loss {train_loss:.4f}")

    def round_done(self, round_idx: int, metrics: dict[str, float]) -> None:
        info = "  ".join(f"{k} {metrics[k]:.4g}" for k in ("eval_loss", "eval_perplexity", "eval_accuracy") if k in metrics)
        self.progress.update(self.rounds_task, completed=round_idx, info=info)
        self.progress.reset(self.clients_task, info="")

    def stop(self) -> None:
        self.progress.stop()
