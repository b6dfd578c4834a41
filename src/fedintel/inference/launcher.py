"""Start device processes on this machine, wait until they listen, and never leave one behind.

Each worker is ``python -m fedintel.inference.worker ...`` with ``--parent-pid`` so it exits by itself if
we die, and its own TLS certificate: the group issues one per worker, named after it, from the CA of its
:class:`~fedintel.inference.protocol.LinkSecurity` (by default a fresh CA written into the group's private
work directory, mode 0700, and deleted with the group), and passes ``--certs DIR --name NAME``; private
keys are files of mode 0600, never on a command line or in the environment. With plaintext security the
workers get ``--insecure`` and listen on loopback only. :class:`WorkerGroup` is a context manager; every
group also registers with ``atexit``, and a group that fails to start kills whatever it had started before
raising.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from fedintel.inference.protocol import Client, LinkSecurity, ProtocolError, RemoteError

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[WorkerGroup] = weakref.WeakSet()


class LaunchError(RuntimeError):
    """A device process failed to start; the message includes the end of its log."""


@dataclass
class WorkerProcess:
    """One started device: its process, address and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    address: str = ""
    log_path: Path = field(default_factory=Path)

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the worker's stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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
        _LIVE.add(self)

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
                log_path = self._logdir / f"{name}.log"
                cmd = [sys.executable, "-m", self.module, *args, *self.security.device(name).worker_args(),
                       "--parent-pid", str(os.getpid()), "--threads", str(self.threads)]
                with open(log_path, "wb") as errf:
                    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.DEVNULL,
                                             env=env)
                w = WorkerProcess(name, popen, log_path=log_path)
                started.append(w)
                self.workers.append(w)
            deadline = time.monotonic() + self.start_timeout
            for w in started:
                w.address = self._wait_ready(w, deadline)
        except BaseException:
            for w in started:
                _kill(w)
            raise
        return started

    def _wait_ready(self, w: WorkerProcess, deadline: float) -> str:
        assert w.popen.stdout is not None
        fd = w.popen.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchError(f"device {w.name} did not become ready within {self.start_timeout:g} s\n"
                                  f"{w.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    w.popen.wait(timeout=5)
                    raise LaunchError(f"device {w.name} exited during start-up (code {w.popen.returncode})\n"
                                      f"{w.log_tail()}")
                buf += chunk
        try:
            info = json.loads(buf.split(b"\n", 1)[0])
        except ValueError:
            raise LaunchError(f"device {w.name} printed {buf[:200]!r} instead of its ready line") from None
        if not info.get("ready"):
            raise LaunchError(f"device {w.name} failed to start: {info.get('error')}\n{w.log_tail()}")
        return str(info["address"])

    def client(self, w: WorkerProcess, timeout: float = 30.0) -> Client:
        """A client for worker ``w`` that checks, over TLS, that the server's certificate names ``w``."""
        return Client(w.address, self.security, timeout=timeout, server_name=None if self.security.insecure else w.name)

    def kill(self, w: WorkerProcess) -> None:
        """Kill one worker at once (SIGKILL), as a crash would."""
        _kill(w, graceful=False)

    def close(self) -> None:
        """Ask every worker to shut down, then terminate/kill stragglers; waits for all of them."""
        threads = [threading.Thread(target=self._stop_one, args=(w,), daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        for w in self.workers:
            _kill(w, graceful=False)
        self.workers = []
        _LIVE.discard(self)
        if self._own_ca is not None:
            shutil.rmtree(self._own_ca, ignore_errors=True)

    def _stop_one(self, w: WorkerProcess) -> None:
        if w.alive() and w.address:
            try:
                Client(w.address, self.security, timeout=2.0, connect_timeout=1.0).request("shutdown")
            except (ProtocolError, RemoteError, OSError):
                pass
        _kill(w)

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill(w: WorkerProcess, graceful: bool = True) -> None:
    p = w.popen
    if p.poll() is None:
        if graceful:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    if p.stdout is not None and not p.stdout.closed:
        p.stdout.close()


@atexit.register
def _close_all() -> None:
    for g in list(_LIVE):
        for w in g.workers:
            try:
                _kill(w, graceful=False)
            except Exception:  # best effort at interpreter exit
                pass


def child_pids(pid: int | None = None, command: str | None = None) -> list[int]:
    """Direct children of ``pid`` (default: this process) that are still alive, from /proc; with ``command``,
    only those whose command line contains it (e.g. ``"fedintel"``: device processes, not helpers such as
    multiprocessing's resource tracker, which lives as long as its parent by design)."""
    pid = os.getpid() if pid is None else pid
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().decode(errors="replace") if command else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and (command is None or command in cmdline):
            out.append(int(d.name))
    return out
