"""A warm ClientApp launcher for a SuperNode: fork a pre-imported process per message.

Flower's SuperExec starts a fresh ``flwr-clientapp`` Python process for every message, and each one imports
torch, transformers and PEFT again (5-7 s of a core on this machine) before fedintel trains for a fraction of
a second. This launcher replaces SuperExec for a SuperNode started with ``--isolation process``: it imports
those libraries once, then for every task the SuperNode hands out it ``fork()``s a child that runs Flower's
own ClientApp runtime (:func:`flwr.supernode.runtime.run_clientapp.run_clientapp`) with the task's token.
Each message still gets its own process (Flower's isolation is kept, a crash kills only that child), but
without the import cost. The child still builds the model from the node's on-disk cache (no torch op runs in
the parent, so forking is safe for torch's thread pools).

Use it through ``fedintel deploy supernode --warm`` (or ``LocalCluster(warm=True)``), which starts::

    flower-supernode --isolation process ...      # the node, without its own SuperExec
    python -m fedintel.engines.flower.warm --runtime-api-address 127.0.0.1:PORT --parent-pid NODE_PID

It relies on Flower 1.41's Runtime API (``AcquireTask``), one of the reasons ``flwr`` is pinned to 1.41.*.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

log = logging.getLogger(__name__)


def _preimport() -> None:
    """Import everything a fedintel ClientApp needs, without running any torch op."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from flwr.supernode.runtime import run_clientapp  # noqa: F401

    import fedintel.engines.flower.client_app  # noqa: F401
    import fedintel.models.loader  # noqa: F401
    import fedintel.training.client  # noqa: F401


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def serve(runtime_api_address: str, parent_pid: int | None, poll_interval: float = 0.05,
          root_certificates: str | None = None) -> None:
    """Acquire ClientApp tasks from the SuperNode at ``runtime_api_address`` and run each in a forked child."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    insecure = root_certificates is None
    certs = validate_and_resolve_root_certificates(root_certificates, insecure)
    invoker = make_simple_http_retry_invoker()
    invoker.max_time = 5.0  # give up after 5 s so the loop can notice that the SuperNode is gone
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure, root_certificates=certs,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")], retry_invoker=invoker)
    children: set[int] = set()
    stop = {"now": False}

    def _stop(_sig: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop["now"]:
            if parent_pid is not None and not _alive(parent_pid):
                log.info("the SuperNode (pid %d) is gone; exiting", parent_pid)
                break
            _reap(children)
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
            except Exception as err:  # the SuperNode restarting or gone: check its pid, then try again
                log.warning("cannot reach the SuperNode's Runtime API: %s", err)
                time.sleep(0.5)
                continue
            if res.HasField("task") and res.token:
                pid = os.fork()
                if pid == 0:  # child: Flower's own ClientApp runtime, then exit without returning
                    code = 1
                    try:
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                        run_clientapp(runtime_api_address=runtime_api_address, token=res.token, insecure=insecure,
                                      certificates=certs, parent_pid=None, runtime_dependency_install=False)
                        code = 0
                    except SystemExit as exc:
                        code = exc.code if isinstance(exc.code, int) else 1
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                children.add(pid)
                continue
            time.sleep(poll_interval)
    finally:
        client.close()
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m fedintel.engines.flower.warm --runtime-api-address HOST:PORT [--parent-pid PID]``."""
    p = argparse.ArgumentParser(description="Warm ClientApp launcher for a SuperNode started with --isolation process")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (host:port of --port)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits")
    p.add_argument("--root-certificates", default=None, help="CA of the Runtime API if it serves TLS")
    p.add_argument("--poll-interval", type=float, default=0.05, help="seconds between task polls")
    args = p.parse_args(argv)
    if not log.handlers:  # own handler: the `fedintel` CLI may have configured the root logger at WARNING
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s fedintel-warm %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    _preimport()
    log.info("pre-imported torch, transformers, peft, datasets in %.1f s; waiting for tasks on %s",
             time.perf_counter() - t0, args.runtime_api_address)
    serve(args.runtime_api_address, args.parent_pid, args.poll_interval, args.root_certificates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
