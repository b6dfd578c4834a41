"""The metrics store: one SQLite database per run, in long format so any metric can be queried.

Tables::

    runs(run_id, name, config, status, created_at, finished_at, message)
    round_metrics(run_id, round, name, value)               -- eval_loss, sim_time_s, bytes_up, ...
    client_metrics(run_id, round, client_id, name, value)   -- train_loss, bytes_up, energy_j, ...
    events(run_id, round, client_id, kind, message)          -- rejected / dropped updates, failures

Query it with any SQLite client, e.g.
``SELECT round, value FROM round_metrics WHERE name = 'eval_loss' ORDER BY round``.

Any SQLite failure (a damaged or foreign file, a full disk, a database locked too long) surfaces as a
:class:`StoreError` naming the file, which the CLI prints as one line.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedintel.tracking.rundir import RunDirError

F = TypeVar("F", bound=Callable[..., Any])


class StoreError(RunDirError):
    """The metrics store could not be read or written; the message names the file and the SQLite error."""


def _clear_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: MetricsStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as err:
            raise StoreError(f"metrics store {self.path}: {err} ({type(err).__name__}); "
                             "check the file, the disk and that no other process holds it") from None

    return wrapper  # type: ignore[return-value]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, config TEXT, status TEXT,
    created_at REAL, finished_at REAL, message TEXT
);
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id TEXT, round INTEGER, name TEXT, value REAL,
    PRIMARY KEY (run_id, round, name)
);
CREATE TABLE IF NOT EXISTS client_metrics (
    run_id TEXT, round INTEGER, client_id INTEGER, name TEXT, value REAL,
    PRIMARY KEY (run_id, round, client_id, name)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT, round INTEGER, client_id INTEGER, kind TEXT, message TEXT
);
CREATE TABLE IF NOT EXISTS run_info (
    run_id TEXT, key TEXT, value TEXT,
    PRIMARY KEY (run_id, key)
);
"""


class MetricsStore:
    """Append-only metrics of one or more runs in a SQLite file (WAL mode, one transaction per round)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (``read_only=False``: create) the store at ``path``.

        ``read_only`` opens it with SQLite's ``mode=ro``: reading a committed store (a report, a plot, a test)
        never changes it. When no ``-wal`` file lies beside it (no writer holds uncheckpointed pages) it is
        also opened ``immutable``, so the read leaves no ``-wal``/``-shm`` files behind.
        """
        self.path = Path(path)
        self.read_only = read_only
        self.conn: sqlite3.Connection = self._open_read_only() if read_only else self._open()

    @_clear_errors
    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"metrics store {self.path} does not exist")
        quiet = not Path(f"{self.path}-wal").exists()
        uri = f"{self.path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if quiet else "")
        return sqlite3.connect(uri, uri=True, timeout=30)

    @_clear_errors
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            conn.commit()
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------
    def start_run(self, run_id: str, name: str, config_yaml: str) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, 'running', ?, NULL, NULL)",
                (run_id, name, config_yaml, time.time()),
            )
            self.conn.execute("UPDATE runs SET status='running', message=NULL WHERE run_id=?", (run_id,))

    def set_info(self, run_id: str, key: str, value: str) -> None:
        """Record a fact about the run (``hardware``: where it ran); a different value later (a resume on
        other hardware) is appended, so the store keeps every place the run went."""
        with self.conn:
            old = self.conn.execute("SELECT value FROM run_info WHERE run_id=? AND key=?", (run_id, key)).fetchone()
            if old is not None and value in old[0].split(" | then "):
                return
            new = value if old is None else f"{old[0]} | then {value}"
            self.conn.execute("INSERT OR REPLACE INTO run_info VALUES (?, ?, ?)", (run_id, key, new))

    def info(self, run_id: str) -> dict[str, str]:
        """The facts :meth:`set_info` recorded (an older store has none)."""
        has = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='run_info'").fetchone()
        if has is None:
            return {}
        return dict(self.conn.execute("SELECT key, value FROM run_info WHERE run_id=?", (run_id,)).fetchall())

    def set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET status=?, message=?, finished_at=? WHERE run_id=?",
                (status, message, time.time(), run_id),
            )

    def log_round(
        self,
        run_id: str,
        round_idx: int,
        metrics: dict[str, float],
        clients: dict[int, dict[str, float]] | None = None,
        events: list[tuple[int | None, str, str]] | None = None,
    ) -> None:
        """Write everything a round produced in one transaction (all of it or none of it)."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO round_metrics VALUES (?, ?, ?, ?)",
                [(run_id, round_idx, k, float(v)) for k, v in metrics.items()],
            )
            rows = [
                (run_id, round_idx, cid, k, float(v))
                for cid, m in (clients or {}).items()
                for k, v in m.items()
            ]
            self.conn.executemany("INSERT OR REPLACE INTO client_metrics VALUES (?, ?, ?, ?, ?)", rows)
            self.conn.execute("DELETE FROM events WHERE run_id=? AND round=?", (run_id, round_idx))
            self.conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                [(run_id, round_idx, cid, kind, msg) for cid, kind, msg in events or []],
            )

    def truncate_after(self, run_id: str, round_idx: int) -> None:
        """Forget rounds after ``round_idx`` (they are recomputed when a run resumes)."""
        with self.conn:
            for table in ("round_metrics", "client_metrics", "events"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id=? AND round>?", (run_id, round_idx))

    # -- reading -------------------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT run_id FROM runs ORDER BY created_at")]

    def run_info(self, run_id: str) -> dict[str, object]:
        row = self.conn.execute(
            "SELECT run_id, name, status, created_at, finished_at, message FROM runs WHERE run_id=?", (run_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return dict(zip(("run_id", "name", "status", "created_at", "finished_at", "message"), row, strict=True))

    def series(self, run_id: str, name: str) -> list[tuple[int, float]]:
        """``(round, value)`` pairs of one round-level metric."""
        return list(
            self.conn.execute(
                "SELECT round, value FROM round_metrics WHERE run_id=? AND name=? ORDER BY round", (run_id, name)
            )
        )

    def rounds(self, run_id: str) -> list[dict[str, float]]:
        """One dict per round with every round-level metric (``round`` included)."""
        table: dict[int, dict[str, float]] = defaultdict(dict)
        for rnd, name, value in self.conn.execute(
            "SELECT round, name, value FROM round_metrics WHERE run_id=? ORDER BY round", (run_id,)
        ):
            table[rnd]["round"] = rnd
            table[rnd][name] = value
        return [table[r] for r in sorted(table)]

    def client_rows(self, run_id: str, round_idx: int | None = None) -> list[dict[str, float]]:
        q = "SELECT round, client_id, name, value FROM client_metrics WHERE run_id=?"
        args: tuple[object, ...] = (run_id,)
        if round_idx is not None:
            q += " AND round=?"
            args += (round_idx,)
        table: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
        for rnd, cid, name, value in self.conn.execute(q + " ORDER BY round, client_id", args):
            table[(rnd, cid)].update(round=rnd, client_id=cid)
            table[(rnd, cid)][name] = value
        return list(table.values())

    def events(self, run_id: str, kind: str | None = None) -> list[tuple[int, int | None, str, str]]:
        q = "SELECT round, client_id, kind, message FROM events WHERE run_id=?"
        args: tuple[object, ...] = (run_id,)
        if kind:
            q += " AND kind=?"
            args += (kind,)
        return list(self.conn.execute(q + " ORDER BY round", args))


for _name in ("start_run", "set_status", "log_round", "truncate_after", "run_ids", "run_info", "series", "rounds",
              "client_rows", "events"):
    setattr(MetricsStore, _name, _clear_errors(getattr(MetricsStore, _name)))


def finished_rounds(run_dir: Path) -> list[dict[str, float]] | None:
    """Per-round metrics of the newest run in ``run_dir/metrics.db`` if it finished; ``None`` when there is
    no store or the run was interrupted (what resumable drivers and benchmarks check before running)."""
    db = Path(run_dir) / "metrics.db"
    if not db.is_file():
        return None
    with MetricsStore(db, read_only=True) as store:
        ids = store.run_ids()
        if not ids or store.run_info(ids[-1])["status"] != "finished":
            return None
        return store.rounds(ids[-1])
