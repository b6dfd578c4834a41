"""Batched vs sequential client training (issue #15), and the engine's own overhead at 100 clients per round.

1. Throughput: N clients (8, 16, 32), each training ``--steps`` local steps of 8 x 64 tokens (packed real text,
   so no row carries padding) with LoRA r=8 on q/v, trained one by one (:class:`LocalEngine`) and together
   (:class:`BatchedEngine`, ``runtime.client_batching: N``), interleaved, on SmolLM2-135M and tiny-llama in one
   run. Reported: clients/s, tokens/s, the ratio batched / sequential, peak memory (CUDA: max allocated; CPU:
   peak RSS growth over the run's start, sampled every 10 ms) and the largest relative difference between the
   two engines' deltas. Targets: CPU >= 0.95x (a CPU step is compute-bound: parity expected); accelerator
   >= 3x at 16 clients on SmolLM2.
2. Engine overhead: one FedAvg round of 100 clients (tiny-llama, sequential local engine, network model on),
   its wall time minus the time spent inside the clients' training loops, as a share of that training time
   (target <= 2 %).

    python benchmarks/batched_clients.py            # full run (the lead runs it on a quiet machine / a GPU)
    python benchmarks/batched_clients.py --quick    # smoke: tiny-llama, 2 and 4 clients, 20-client round
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import _common  # noqa: F401  (offline environment)
import psutil
import torch

import fedintel.training.job as job_module
from fedintel.config import parse_config
from fedintel.data.tokenize import TokenizedSet
from fedintel.engines.batched import BatchedEngine
from fedintel.engines.local import LocalEngine
from fedintel.experiment import build_scheme
from fedintel.types import TrainJob
from fedintel.world import World, build_world


class PeakMemory:
    """Peak memory of a section: CUDA max allocated, or the process RSS sampled every 10 ms (MiB over start)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            proc = psutil.Process()
            self.base = self.peak = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.01):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def world_for(model: str, clients: int, steps: int, device: str, tmp: Path) -> World:
    """A world of ``clients`` clients whose shards are packed 64-token rows of real text (8 per step)."""
    cfg = parse_config({
        "name": "batched-bench", "model": {"name": model},
        "data": {"dataset": "chatterbot", "max_length": 64, "samples_per_client": 40},
        "peft": {"method": "lora", "r": 8, "dropout": 0.0},
        "federation": {"num_clients": clients, "clients_per_round": clients, "local_steps": steps, "batch_size": 8,
                       "micro_batch_size": 8, "lr": 2e-4},
        "runtime": {"device": device, "client_batching": clients}, "output": {"dir": str(tmp)},
    })
    world = build_world(cfg)
    stream = [t for c in world.data.clients for ids in c.train.input_ids for t in ids]
    rows = [stream[i : i + 64] for i in range(0, len(stream) - 64, 64)]
    need = 8 * steps
    for i, client in enumerate(world.data.clients):
        client.train = TokenizedSet([rows[(i * need + j) % len(rows)] for j in range(need)])
    return world


def max_rel_err(a: list, b: list) -> float:
    return max(float((x.delta[k] - y.delta[k]).abs().max() / y.delta[k].abs().max().clamp_min(1e-30))
               for x, y in zip(a, b, strict=True) for k in y.delta)


def throughput(models: list[str], sizes: list[int], steps: int, repeats: int, device: str) -> list[list[object]]:
    rows = []
    for model in models:
        per_client = 0.0  # MiB of batched peak memory per client, from the last size measured
        for n in sizes:
            free = psutil.virtual_memory().available / 2**20
            on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
            if on_cpu and per_client * n > 0.8 * free:
                # a batched group's activations grow with its clients: past the RAM there is only the OOM killer
                print(f"{model}, {n} clients: skipped, batched needs ~{per_client * n / 1024:.0f} GiB, "
                      f"{free / 1024:.0f} GiB free", flush=True)
                rows.append([model, "cpu", n, "batched", "-", "-", "-", f"~{per_client * n:.0f} (skipped)", "-"])
                continue
            with TemporaryDirectory() as tmp:
                world = world_for(model, n, steps, device, Path(tmp))
            jobs = [TrainJob(c, world.initial_state, 0, 1) for c in range(n)]
            engines = {"sequential": LocalEngine(world), "batched": BatchedEngine(world)}
            times: dict[str, list[float]] = {k: [] for k in engines}
            mem: dict[str, float] = {k: 0.0 for k in engines}
            results: dict[str, list] = {}
            for _ in range(repeats):
                for name, engine in engines.items():  # interleaved: both see the same machine state
                    with PeakMemory(world.runtime.device) as peak:
                        t0 = time.perf_counter()
                        results[name] = engine.train(jobs)
                        if world.runtime.device.type == "cuda":
                            torch.cuda.synchronize()
                        times[name].append(time.perf_counter() - t0)
                    mem[name] = max(mem[name], peak.mib)
            tokens = sum(u.tokens for u in results["sequential"])
            med = {k: statistics.median(v) for k, v in times.items()}
            err = max_rel_err(results["batched"], results["sequential"])
            for name in engines:
                rows.append([model, str(world.runtime.device), n, name, round(n / med[name], 3),
                             round(tokens / med[name], 1), round(med["sequential"] / med[name], 3),
                             round(mem[name], 1), f"{err:.1e}" if name == "batched" else "-"])
            per_client = mem["batched"] / n
            print(rows[-2], rows[-1], flush=True)
    return rows


def overhead(clients: int, device: str) -> list[object]:
    """One FedAvg round of ``clients`` tiny-llama clients: wall time minus the clients' training time."""
    with TemporaryDirectory() as tmp:
        cfg = parse_config({
            "name": "overhead", "model": {"name": "tiny-llama"},
            "data": {"dataset": "chatterbot", "max_length": 64, "samples_per_client": 8, "global_eval_samples": 8},
            "federation": {"rounds": 2, "num_clients": clients, "clients_per_round": clients, "local_steps": 2,
                           "batch_size": 4, "micro_batch_size": 4},
            "eval": {"every": 1000, "at_start": False, "per_client": False},  # round 1 of 2: no evaluation
            "runtime": {"device": device}, "output": {"dir": tmp},
        })
        world = build_world(cfg)
        scheme = build_scheme(cfg, world, reporter=None)
        inside = [0.0]
        real = job_module.train_local

        def timed(*args: object, **kwargs: object):  # noqa: ANN202
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter() - t0

        job_module.train_local = timed
        try:
            state = scheme.initial_state()
            t0 = time.perf_counter()
            scheme.run_round(1, state)
            wall = time.perf_counter() - t0
        finally:
            job_module.train_local = real
            scheme.engine.close()
    return [clients, round(wall, 3), round(inside[0], 3), round(wall - inside[0], 3),
            f"{100 * (wall - inside[0]) / inside[0]:.2f} %"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny-llama, 2 and 4 clients, 20-client round")
    ap.add_argument("--steps", type=int, default=2, help="local steps per client")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="*", help="default: smollm2-135m tiny-llama (quick: tiny-llama)")
    ap.add_argument("--sizes", nargs="*", type=int, help="clients per round; default: 8 16 32 (quick: 2 4)")
    ap.add_argument("--no-overhead", action="store_true", help="skip the 100-client engine overhead round")
    args = ap.parse_args()
    models = args.models or (["tiny-llama"] if args.quick else ["smollm2-135m", "tiny-llama"])
    sizes = args.sizes or ([2, 4] if args.quick else [8, 16, 32])
    repeats = 1 if args.quick else args.repeats
    steps = 1 if args.quick else args.steps
    rows = throughput(models, sizes, steps, repeats, args.device)
    print(f"\nClients of 8 x 64 tokens, {steps} local steps each, LoRA r=8 on q/v, median of {repeats}:\n")
    print(_common.table(["model", "device", "clients", "engine", "clients/s", "tokens/s", "x sequential",
                         "peak mem (MiB)", "max rel. delta diff"], rows))
    if args.no_overhead:
        return
    row = overhead(20 if args.quick else 100, args.device)
    print("\nEngine overhead, one FedAvg round (tiny-llama, local engine, network model on):\n")
    print(_common.table(["clients", "round wall (s)", "inside train_local (s)", "overhead (s)",
                         "overhead / training"], [row]))


if __name__ == "__main__":
    main()
