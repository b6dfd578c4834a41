"""Peak memory with many simulated clients: one shared base model, one adapter per client.

Runs a FedAvg round with 1 client and with N clients (default 100) in separate processes and compares
peak RSS. Target (issue #2): peak(N) <= base + 1.2 x N x adapter size, i.e. the growth from 1 to N clients
stays within 1.2 x (N - 1) adapters.

    python benchmarks/memory.py [--clients 100] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import _common


def child(model: str, clients: int) -> None:
    from fedintel.config import parse_config
    from fedintel.experiment import run_experiment

    raw = {
        "name": "mem", "model": {"name": model},
        "data": {"dataset": "chatterbot", "max_length": 16, "samples_per_client": 4, "global_eval_samples": 4,
                 "eval_fraction": 0.0},
        "federation": {"rounds": 1, "num_clients": clients, "clients_per_round": clients, "local_steps": 1,
                       "batch_size": 2, "micro_batch_size": 2},
        "eval": {"per_client": False, "max_samples": 2, "at_start": False},
        "output": {"dir": tempfile.mkdtemp(), "save_adapter": False},
    }
    res = run_experiment(parse_config(raw))
    from fedintel.tracking.checkpoint import latest_checkpoint

    adapter = sum(t.numel() * t.element_size() for t in latest_checkpoint(res.run_dir)["state"]["global"].values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "adapter": adapter}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.child)
        return
    out = {}
    for n in (1, args.clients):
        p = subprocess.run([sys.executable, __file__, "--child", str(n), "--model", args.model],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        out[n] = json.loads(p.stdout.strip().splitlines()[-1])
    adapter = out[1]["adapter"]
    growth = out[args.clients]["peak"] - out[1]["peak"]
    bound = 1.2 * (args.clients - 1) * adapter
    mb = 1 / 2**20
    print(f"model {args.model}; adapter {adapter * mb:.2f} MiB")
    print(_common.table(
        ["clients", "peak RSS (MiB)", "growth over 1 client (MiB)", "1.2 x adapters (MiB)", "within bound"],
        [[1, out[1]["peak"] * mb, 0.0, 0.0, "-"],
         [args.clients, out[args.clients]["peak"] * mb, growth * mb, bound * mb, "yes" if growth <= bound else "NO"]],
    ))


if __name__ == "__main__":
    main()
