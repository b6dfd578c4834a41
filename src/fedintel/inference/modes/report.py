"""What a mode returns: its values, and the tables and lines the command line prints from them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class ReportTable:
    """A table to print: ``right`` lists the columns aligned right (numbers)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    right: tuple[int, ...] = ()


class ModeReport(ABC):
    """A mode's result. ``ok`` is false when the run worked but its check failed (the exit status is 1)."""

    @property
    def ok(self) -> bool:
        return True

    @abstractmethod
    def render(self) -> list[ReportTable | str]:
        """What to print, in order: tables and lines of text."""


def measured_vs_simulated(title: str, rows: list[tuple[str, str, str]]) -> ReportTable:
    """The usual table: a quantity, its value measured on this machine, and simulated for the configuration."""
    return ReportTable(title, ("quantity", "measured (this machine)", "simulated (devices/links)"), rows, (1, 2))


def ms(seconds: float) -> str:
    """``"12.34 ms"``."""
    return f"{seconds * 1e3:.2f} ms"
