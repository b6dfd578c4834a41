"""Start, watch and stop the processes fedintel runs on this machine, and never leave one behind.

One supervisor for every process fedintel starts: the device processes of collaborative inference
(:mod:`fedintel.inference.launcher`) and Flower's SuperLink, SuperNodes and warm launchers
(:mod:`fedintel.engines.flower.deploy`). A :class:`ManagedProcess` writes its output to a log file (or hands
its stdout to the caller for a ready line), and stops as a tree: the process and every descendant it has
when asked (found with ``psutil``), plus its process group when it was started in its own session, so a
child that outlived its parent is stopped too. Processes still running when the interpreter exits are
killed (``atexit``), so a crash of the test or command that started them leaves no orphan.

Processes are found by their command line or environment through ``psutil``, never by parsing ``/proc``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedintel.errors import FedintelError

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ProcessError(FedintelError, RuntimeError):
    """A supervised process failed to start or to become ready; the message ends with its log tail."""


class ProcessExited(ProcessError):
    """The process exited while we waited for it (``returncode`` is its exit status)."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


@dataclass(eq=False)
class ManagedProcess:
    """A process fedintel started: its ``Popen``, log file, and whether it leads its own session."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    own_session: bool = False

    def __post_init__(self) -> None:
        self._owner = os.getpid()  # a forked copy of this object never stops its parent's processes
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while it runs."""
        return self.popen.poll()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its status (``subprocess.TimeoutExpired`` after ``timeout`` s)."""
        return self.popen.wait(timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log file ("" without one)."""
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ readiness
    def read_line(self, deadline: float) -> bytes:
        """The first line the process prints on stdout (started with ``ready_pipe=True``), without the newline.

        Raises :class:`ProcessExited` if it exits first and ``TimeoutError`` at ``deadline`` (``time.monotonic``)."""
        if self.popen.stdout is None:
            raise ProcessError(f"{self.name} was started without a stdout pipe (ready_pipe=False)")
        fd = self.popen.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name} printed no line before the deadline")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    try:
                        code: int | None = self.popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        code = None
                    raise ProcessExited(f"{self.name} exited (code {code})", code)
                buf += chunk
        return buf.split(b"\n", 1)[0]

    def wait_for_port(self, host: str, port: int, timeout: float) -> None:
        """Block until ``host:port`` accepts TCP connections (:class:`ProcessError` with the log tail if the
        process exits first or ``timeout`` seconds pass)."""
        wait_for_port(host, port, timeout, self)

    # ------------------------------------------------------------------ stopping
    def tree(self) -> list[psutil.Process]:
        """The process and its descendants right now (empty once it has exited: its pid may be reused)."""
        if self.popen.poll() is not None:
            return []
        try:
            me = psutil.Process(self.pid)
            return [me, *me.children(recursive=True)]
        except psutil.Error:
            return []

    def send_signal(self, sig: int, tree: list[psutil.Process] | None = None) -> None:
        """Send ``sig`` to the process tree (``tree``, default: as it is now) and, if it leads its own session,
        to its process group (children that outlived their parent stay in it)."""
        for p in self.tree() if tree is None else tree:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if self.own_session:
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        """SIGKILL the process and every descendant at once (as a crash would), and reap it."""
        self.send_signal(signal.SIGKILL)
        self.popen.wait()
        self._close_pipes()

    def stop(self, grace: float = 5.0, exit_wait: float = 0.0) -> None:
        """Stop the tree: up to ``exit_wait`` seconds to exit by itself (it was asked to), then SIGTERM, up to
        ``grace`` seconds, then SIGKILL to whatever is left (descendants included)."""
        tree = self.tree()  # before any signal: a child whose parent died is no longer found through it
        if self.alive() and exit_wait > 0:
            try:
                self.popen.wait(timeout=exit_wait)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + grace
        if self.alive():
            self.send_signal(signal.SIGTERM, tree)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        descendants = [p for p in tree[1:] if _running(p)]  # tree[0] is reaped by Popen, never by psutil
        if descendants:
            psutil.wait_procs(descendants, timeout=max(0.0, deadline - time.monotonic()))
        self.send_signal(signal.SIGKILL, [*tree[1:], *self.tree()])  # and the group: children that outlived it
        self.popen.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.popen.stdout is not None and not self.popen.stdout.closed:
            self.popen.stdout.close()


def start_process(name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path | None, *,
                  cwd: Path | None = None, own_session: bool = True, ready_pipe: bool = False) -> ManagedProcess:
    """Start ``cmd`` with its output appended to ``log_path`` (``None``: this process's stdout and stderr).

    ``own_session``: in a new session (Ctrl-C in a terminal does not reach it; stopping it stops its
    process group). ``ready_pipe``: stdout is a pipe for :meth:`ManagedProcess.read_line` and only stderr
    goes to the log."""
    with contextlib.ExitStack() as stack:
        out = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(log_path, "ab"))
        popen = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE if ready_pipe else out,
                                 stderr=out if ready_pipe or out is None else subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=str(cwd) if cwd else None,
                                 start_new_session=own_session)
    log.info("started %s (pid %d): %s", name, popen.pid, " ".join(cmd))
    return ManagedProcess(name, popen, log_path, own_session)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: ManagedProcess | None = None,
                  error: type[ProcessError] = ProcessError) -> None:
    """Block until ``host:port`` accepts TCP connections; raise ``error`` (with ``proc``'s log tail) if
    ``proc`` exits first or nothing listens after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise error(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise error(f"nothing listens on {host}:{port} after {timeout:.0f} s" + (f":\n{proc.tail()}" if proc else ""))


# ---------------------------------------------------------------------------------- finding processes
def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def child_pids(pid: int | None = None, command: str | None = None) -> list[int]:
    """Direct children of ``pid`` (default: this process) that still run (zombies left out); with
    ``command``, only those whose command line contains it (e.g. ``"fedintel"``: device processes, not
    helpers such as multiprocessing's resource tracker, which lives as long as its parent by design)."""
    try:
        children = psutil.Process(os.getpid() if pid is None else pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if _running(c) and (command is None or command in _cmdline(c))]


def processes_with_env(marker: str) -> list[psutil.Process]:
    """This user's running processes (not this one, no zombies) with ``marker`` (``"KEY=VALUE..."``, e.g. a
    unique ``FLWR_HOME`` root) in an environment entry."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            env = p.environ()
        except psutil.Error:  # another user's process, or gone
            continue
        if any(marker in f"{k}={v}" for k, v in env.items()) and _running(p):
            found.append(p)
    return found


def pids_with_env(marker: str) -> list[int]:
    """PIDs of :func:`processes_with_env`."""
    return [p.pid for p in processes_with_env(marker)]


def describe(p: psutil.Process, width: int = 200) -> str:
    """``"pid: command line"`` (cut at ``width`` characters), for messages about leftover processes."""
    return f"{p.pid}: {_cmdline(p)[:width]}"


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()).strip()
    except psutil.Error:
        return ""


@atexit.register
def _kill_all_at_exit() -> None:
    """Kill what this interpreter started and did not stop (an uncaught error, a test that crashed)."""
    for proc in list(_LIVE):
        if proc._owner == os.getpid() and proc.alive():
            try:
                proc.kill()
            except Exception:  # best effort at interpreter exit
                pass
