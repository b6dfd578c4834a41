"""The process supervisor with real processes: ready lines, port waits, whole-tree stops (a grandchild that
left the process group included), finding processes by command line and environment, and no orphan when
the interpreter that started them exits without stopping them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from fedintel.processes import (
    ProcessError,
    ProcessExited,
    child_pids,
    free_port,
    pids_with_env,
    start_process,
    wait_for_port,
)

PY = sys.executable
# a child that starts a grandchild in a session of its own (out of the child's process group), prints the
# grandchild's pid, then sleeps
FAMILY = ("import os, subprocess, sys, time; "
          "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
          "print(g.pid, flush=True); time.sleep(60)")


def _gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("own_session", [True, False])
def test_stop_ends_the_whole_tree(tmp_path, own_session):
    p = start_process("family", [PY, "-c", FAMILY], dict(os.environ), tmp_path / "family.log",
                      own_session=own_session, ready_pipe=True)
    grandchild = int(p.read_line(time.monotonic() + 30))
    assert psutil.Process(grandchild).ppid() == p.pid  # found through its parent although in another group
    p.stop(grace=2.0)
    assert not p.alive() and p.returncode is not None
    assert _gone(grandchild), "the grandchild outlived stop()"


def test_kill_is_immediate_and_takes_descendants(tmp_path):
    p = start_process("family", [PY, "-c", FAMILY], dict(os.environ), tmp_path / "f.log", ready_pipe=True)
    grandchild = int(p.read_line(time.monotonic() + 30))
    t0 = time.monotonic()
    p.kill()
    assert time.monotonic() - t0 < 2.0 and p.returncode == -9
    assert _gone(grandchild)


def test_read_line_reports_exit_and_timeout(tmp_path):
    dead = start_process("dead", [PY, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                         dict(os.environ), tmp_path / "dead.log", ready_pipe=True)
    with pytest.raises(ProcessExited) as info:
        dead.read_line(time.monotonic() + 30)
    assert info.value.returncode == 3 and "boom" in dead.tail()  # stderr went to the log
    mute = start_process("mute", [PY, "-c", "import time; time.sleep(60)"], dict(os.environ), tmp_path / "m.log",
                         ready_pipe=True)
    try:
        with pytest.raises(TimeoutError):
            mute.read_line(time.monotonic() + 0.3)
    finally:
        mute.stop(grace=1.0)


def test_wait_for_port_and_exit_with_log_tail(tmp_path):
    port = free_port()
    server = start_process("server", [PY, "-c", f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', "
                                      f"{port})); s.listen(); time.sleep(60)"], dict(os.environ), tmp_path / "s.log")
    try:
        server.wait_for_port("127.0.0.1", port, 30)
    finally:
        server.stop(grace=1.0)
    crash = start_process("crash", [PY, "-c", "raise SystemExit('no port for you')"], dict(os.environ),
                          tmp_path / "c.log")
    with pytest.raises(ProcessError, match="crash exited with code 1:\nno port for you"):
        wait_for_port("127.0.0.1", free_port(), 30, crash)


def test_processes_are_found_by_command_line_and_environment(tmp_path):
    marker = f"FEDINTEL_TEST_MARK={tmp_path}"
    env = {**os.environ, "FEDINTEL_TEST_MARK": str(tmp_path)}
    p = start_process("marked", [PY, "-c", "import time; time.sleep(60)", "fedintel-marked"], env, tmp_path / "p.log")
    try:
        assert child_pids(command="fedintel-marked") == [p.pid]
        assert child_pids(command="no-such-command") == []
        assert pids_with_env(marker) == [p.pid]
    finally:
        p.stop(grace=1.0)
    assert child_pids(command="fedintel-marked") == [] and pids_with_env(marker) == []


def test_processes_left_running_are_killed_when_the_interpreter_exits(tmp_path):
    script = ("import os, sys, time; from pathlib import Path; from fedintel.processes import start_process; "
              f"p = start_process('orphan', [sys.executable, '-c', {FAMILY!r}], dict(os.environ), "
              f"Path({str(tmp_path / 'o.log')!r}), ready_pipe=True); "
              "print(p.pid, p.read_line(time.monotonic() + 30).decode(), flush=True)")  # exits without stopping p
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    child, grandchild = (int(x) for x in out.stdout.split())
    assert _gone(child) and _gone(grandchild)
