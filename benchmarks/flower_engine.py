"""Flower engine vs local engine: per-round overhead (ratio) and bytes on the wire per round vs adapter size.

Same experiment, same seed, run three ways on this machine:

- ``local``: every client trains in this process (fedintel's default engine);
- ``flower``: a SuperLink and one SuperNode per client on 127.0.0.1, Flower's own SuperExec starting a fresh
  ClientApp process per message (the stock Deployment Engine);
- ``flower-warm``: the same, with fedintel's warm launcher forking a pre-imported ClientApp process per message.

Seconds per round are the run's ``wall_s`` (training + aggregation + evaluation, as the metrics store records
it), averaged over rounds 2..R (round 1 also waits for node discovery; it is reported separately). Bytes on
the wire are counted by a TCP relay between the SuperNodes and the SuperLink (both directions, TLS records and
HTTP framing included, heartbeats and idle polling too), over the whole ``flwr run``, divided by the rounds.
The payload is what the local engine would move: the adapter down and its delta up, per sampled client.

    python benchmarks/flower_engine.py                      # tiny-llama, 3 clients, 3 rounds, TLS + node auth
    python benchmarks/flower_engine.py --model smollm2-135m --clients 2 --rounds 3

Every client trains with ``--threads`` torch threads (default 1) in both engines: the same workload. The
SuperNodes of one machine train in parallel; the local engine trains clients one after another.

Prints a table (and ``--json`` writes the numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from fedintel.config import ExperimentConfig, parse_config  # noqa: E402
from fedintel.engines.flower.certs import write_certs  # noqa: E402
from fedintel.engines.flower.deploy import LocalCluster  # noqa: E402
from fedintel.engines.flower.shards import write_shards  # noqa: E402
from fedintel.experiment import run_experiment  # noqa: E402
from fedintel.processes import free_port  # noqa: E402
from fedintel.tracking.store import MetricsStore  # noqa: E402
from fedintel.types import state_nbytes  # noqa: E402


class CountingRelay:
    """A TCP relay on 127.0.0.1 that forwards to ``target`` and counts the bytes in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = 0  # node -> SuperLink
        self.down = 0  # SuperLink -> node
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, t_writer, True), self._pipe(t_reader, writer, False))
        except asyncio.CancelledError:  # the relay is shutting down
            pass

    def snapshot(self) -> int:
        return self.up + self.down

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def experiment(model: str, rounds: int, clients: int, root: Path, threads: int = 1) -> ExperimentConfig:
    steps = {"tiny-llama": (32, 16), "smollm2-135m": (64, 32)}.get(model, (64, 32))
    return parse_config({
        "name": f"bench-{model}", "engine": "flower", "model": {"name": model}, "threads": threads,
        "data": {"dataset": "chatterbot", "max_length": steps[0], "samples_per_client": steps[1], "global_eval_samples": 16},
        "federation": {"rounds": rounds, "num_clients": clients, "clients_per_round": clients, "local_steps": 2,
                       "batch_size": 4, "micro_batch_size": 4, "lr": 2e-3, "seed": 0},
        "eval": {"max_samples": 8, "per_client": False},
        "output": {"dir": str(root / "runs")},
    })


def per_round(rounds: list[dict[str, float]]) -> tuple[float, float]:
    """(round-1 wall seconds, mean wall seconds of rounds 2..R)."""
    walls = [r["wall_s"] for r in rounds if r.get("round", 0) >= 1]
    return walls[0], statistics.mean(walls[1:]) if len(walls) > 1 else walls[0]


def run_flower(cfg: ExperimentConfig, root: Path, warm: bool, secure: bool, threads: int) -> dict[str, float]:
    n = cfg.federation.num_clients
    certs = write_certs(root / "certs", nodes=n) if secure else None
    shards = write_shards(cfg, root / "shards")
    cl = LocalCluster(root / "cluster", certs=certs)
    relay = None
    try:
        cl.start_superlink()
        relay = CountingRelay(cl.port)
        for i in range(n):
            key = None
            if certs is not None:
                cl.register(f"node{i}", certs.node_pub(i))
                key = certs.node_key(i)
            cl.start_supernode(f"node{i}", shards, [i], private_key=key, warm=warm, threads=threads,
                               superlink=f"127.0.0.1:{relay.port}")  # nodes reach the SuperLink through the relay
        time.sleep(8.0)  # nodes connected and idle: measure the background traffic
        idle_t0, idle_b0 = time.monotonic(), relay.snapshot()
        time.sleep(10.0)
        idle_rate = (relay.snapshot() - idle_b0) / (time.monotonic() - idle_t0)
        t0, b0 = time.monotonic(), relay.snapshot()
        res = cl.run(cfg, root / "run", job_timeout=900, discovery_timeout=300, timeout=3600)
        elapsed, wire = time.monotonic() - t0, relay.snapshot() - b0
        if res.returncode != 0:
            raise RuntimeError(res.stdout[-2000:] + res.stderr[-2000:])
        with MetricsStore(root / "run" / "metrics.db") as store:
            rounds = store.rounds(store.run_ids()[0])
        first, steady = per_round(rounds)
        return {"first_round_s": first, "round_s": steady, "run_s": elapsed, "wire_bytes": wire,
                "idle_bytes_per_s": idle_rate}
    finally:
        if relay is not None:
            relay.close()
        cl.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=3, help="clients = SuperNodes, all sampled every round")
    p.add_argument("--insecure", action="store_true", help="plain HTTP instead of TLS + node auth")
    p.add_argument("--threads", type=int, default=1, help="torch threads per client, local and on every node "
                   "(the same workload; 2 threads on a busy 2-core machine slow torch down a lot)")
    p.add_argument("--skip", action="append", default=[], choices=["flower", "flower-warm"])
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--keep", action="store_true", help="keep the working directory (logs, runs)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedintel-bench-flower-"))
    try:
        return _bench(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _bench(args: argparse.Namespace, root: Path) -> int:
    cfg = experiment(args.model, args.rounds, args.clients, root, args.threads)

    t0 = time.monotonic()
    local = run_experiment(cfg, root / "local")
    local_run_s = time.monotonic() - t0
    first, steady = per_round(local.rounds)
    from fedintel.world import build_world

    adapter = state_nbytes(build_world(cfg).initial_state)
    payload = 2 * adapter * cfg.federation.clients_per_round
    results: dict[str, dict[str, float]] = {"local": {"first_round_s": first, "round_s": steady, "run_s": local_run_s}}
    for name, warm in (("flower", False), ("flower-warm", True)):
        if name not in args.skip:
            results[name] = run_flower(cfg, root / name, warm=warm, secure=not args.insecure, threads=args.threads)

    print(f"\nworkload: {args.model}, {args.clients} clients = SuperNodes, {args.rounds} rounds, adapter {adapter} B, "
          f"{'plain HTTP' if args.insecure else 'TLS + node auth'}, {args.threads} torch thread(s) per client, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'engine':<12} {'s/round':>8} {'x local':>8} {'round 1 s':>10} {'run s':>7} {'wire B/round':>13} "
          f"{'payload B/round':>16} {'wire/payload':>13} {'idle B/s':>9}")
    base = results["local"]["round_s"]
    for name, r in results.items():
        wire = r.get("wire_bytes")
        wr = f"{wire / args.rounds:>13.0f}" if wire is not None else f"{'-':>13}"
        ratio = f"{wire / args.rounds / payload:>13.2f}" if wire is not None else f"{'-':>13}"
        idle = f"{r['idle_bytes_per_s']:>9.0f}" if "idle_bytes_per_s" in r else f"{'-':>9}"
        print(f"{name:<12} {r['round_s']:>8.2f} {r['round_s'] / base:>8.2f} {r['first_round_s']:>10.2f} {r['run_s']:>7.1f} "
              f"{wr} {payload:>16} {ratio} {idle}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "adapter_bytes": adapter, "payload_bytes_per_round": payload,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
