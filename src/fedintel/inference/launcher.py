"""Start device processes on this machine, wait until they listen, and never leave one behind.

Each worker is ``python -m fedintel.inference.worker ...`` with ``--parent-pid`` so it exits by itself if
we die, and its own TLS certificate: the group issues one per worker, named after it, from the CA of its
:class:`~fedintel.inference.protocol.LinkSecurity` (by default a fresh CA written into the group's private
work directory, mode 0700, and deleted with the group), and passes ``--certs DIR --name NAME``; private
keys are files of mode 0600, never on a command line or in the environment. With plaintext security the
workers get ``--insecure`` and listen on loopback only. :class:`WorkerGroup` is a context manager; each
worker is a :class:`~fedintel.processes.ManagedProcess`, killed at interpreter exit if still running, and a
group that fails to start kills whatever it had started before raising.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedintel.inference.protocol import Client, LinkSecurity, ProtocolError, RemoteError
from fedintel.processes import ManagedProcess, ProcessExited, start_process

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """A device process failed to start; the message includes the end of its log."""


@dataclass(eq=False)
class WorkerProcess:
    """One started device: its supervised process and the address it listens on."""

    name: str
    process: ManagedProcess
    address: str = ""

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.process.pid

    @property
    def log_path(self) -> Path | None:
        """The worker's stderr."""
        return self.process.log_path

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.alive()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the worker's stderr."""
        return self.process.tail(lines)


class WorkerGroup:
    """Device processes started together and stopped together.

    ``security`` is this process's side of the links (:class:`LinkSecurity`); ``None`` writes a fresh CA
    for this group into its work directory (removed on :meth:`close`). Workers get certificates of the
    same CA, so a group's workers and its clients trust each other and nothing else. ``module`` is the
    worker program (``python -m MODULE``), one whose ``main`` is :func:`fedintel.inference.worker.main`.
    """

    def __init__(self, security: LinkSecurity | None = None, threads: int = 1, start_timeout: float = 120.0,
                 module: str = "fedintel.inference.worker") -> None:
        self.threads = threads
        self.module = module
        self.start_timeout = start_timeout
        self.workers: list[WorkerProcess] = []
        self._logdir = Path(tempfile.mkdtemp(prefix="fedintel-workers-"))
        self._own_ca: Path | None = None
        if security is None:
            self._own_ca = self._logdir / "tls"
            security = LinkSecurity.fresh(self._own_ca)
        self.security = security

    def start(self, specs: list[tuple[str, list[str]]]) -> list[WorkerProcess]:
        """Start one worker per ``(name, worker args)`` in parallel and wait until all are ready."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        started: list[WorkerProcess] = []
        try:
            for name, args in specs:
                cmd = [sys.executable, "-m", self.module, *args, *self.security.device(name).worker_args(),
                       "--parent-pid", str(os.getpid()), "--threads", str(self.threads)]
                # same session as us: a Ctrl-C in the terminal reaches the devices too
                proc = start_process(name, cmd, env, self._logdir / f"{name}.log", own_session=False, ready_pipe=True)
                w = WorkerProcess(name, proc)
                started.append(w)
                self.workers.append(w)
            deadline = time.monotonic() + self.start_timeout
            for w in started:
                w.address = self._wait_ready(w, deadline)
        except BaseException:
            for w in started:
                w.process.kill()
            raise
        return started

    def _wait_ready(self, w: WorkerProcess, deadline: float) -> str:
        try:
            line = w.process.read_line(deadline)
        except TimeoutError:
            raise LaunchError(f"device {w.name} did not become ready within {self.start_timeout:g} s\n"
                              f"{w.log_tail()}") from None
        except ProcessExited as err:
            raise LaunchError(f"device {w.name} exited during start-up (code {err.returncode})\n"
                              f"{w.log_tail()}") from None
        try:
            info = json.loads(line)
        except ValueError:
            raise LaunchError(f"device {w.name} printed {line[:200]!r} instead of its ready line") from None
        if not info.get("ready"):
            raise LaunchError(f"device {w.name} failed to start: {info.get('error')}\n{w.log_tail()}")
        return str(info["address"])

    def client(self, w: WorkerProcess, timeout: float = 30.0) -> Client:
        """A client for worker ``w`` that checks, over TLS, that the server's certificate names ``w``."""
        return Client(w.address, self.security, timeout=timeout, server_name=None if self.security.insecure else w.name)

    def kill(self, w: WorkerProcess) -> None:
        """Kill one worker at once (SIGKILL), as a crash would."""
        w.process.kill()

    def close(self) -> None:
        """Ask every worker to shut down, then terminate/kill stragglers; waits for all of them."""
        threads = [threading.Thread(target=self._stop_one, args=(w,), daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        for w in self.workers:
            w.process.kill()
        self.workers = []
        if self._own_ca is not None:
            shutil.rmtree(self._own_ca, ignore_errors=True)

    def _stop_one(self, w: WorkerProcess) -> None:
        if w.alive() and w.address:
            try:
                Client(w.address, self.security, timeout=2.0, connect_timeout=1.0).request("shutdown")
            except (ProtocolError, RemoteError, OSError):
                pass
        w.process.stop(grace=3.0, exit_wait=3.0)  # it was asked to shut down: give it time, then SIGTERM

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
