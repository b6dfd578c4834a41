"""The wireless edge on the paper's setup: bandwidth allocation, client selection, over-the-air aggregation.

1. Simulated round time of FL-LoRA on SmolLM2-135M (8 users, 100 m cell, 20 MHz, 23 dBm, -80 dBm noise,
   batch 80 x 128 tokens, heterogeneous devices: lognormal FLOP/s) under `equal` vs `min_max_latency`
   bandwidth allocation, and with `deadline` selection; averaged over fading rounds.
2. Over-the-air vs digital aggregation in training: final eval loss and distance of the aggregated adapter from
   digital FedAvg after a few rounds, on the paper's 100 m cell at several user transmit powers (a tiny model on
   real text, so it runs in minutes). ``benchmarks/ota.py`` measures the aggregation error and upload time
   across radius and power without training.

    python benchmarks/network.py [--rounds 50] [--ota-rounds 3]     # --rounds 0 skips part 1
"""

from __future__ import annotations

import argparse
import math
import tempfile

import _common
import numpy as np

from fedintel.config import ModelConfig, NetworkConfig, parse_config
from fedintel.models.peft_methods import LoraPeftConfig
from fedintel.network.simulator import ClientJob, WirelessNetwork
from fedintel.training.flops import ModelShape, train_flops


def smollm_shape() -> ModelShape:
    from fedintel.models.loader import load_base_model
    from fedintel.models.peft_builder import build_peft_model

    lm = load_base_model(ModelConfig(name="smollm2-135m"))
    return ModelShape.of(build_peft_model(lm.model, LoraPeftConfig(r=8), "causal_lm"))


def round_times(cfg: NetworkConfig, jobs: list[ClientJob], rounds: int) -> tuple[float, float]:
    net = WirelessNetwork(cfg, len(jobs), seed=0)
    times, drops = [], []
    for r in range(1, rounds + 1):
        rt = net.simulate_round(r, 0.0, jobs)
        times.append(rt.duration_s)
        drops.append(len(rt.dropped))
    return float(np.mean(times)), float(np.mean(drops))


def allocation_table(rounds: int) -> str:
    shape = smollm_shape()
    tokens = 80 * 128  # one local step of the paper's batch
    flops = train_flops(shape, tokens, 128)
    nbytes = shape.num_trainable * 4
    jobs = [ClientJob(c, flops, nbytes, nbytes) for c in range(8)]
    rows = []
    scenarios = [
        ("paper cell (20 MHz, 23 dBm)", {"devices": {"distribution": "lognormal", "mean_flops": 5e10, "spread": 0.5}}),
        ("communication-bound (1 MHz, 500 GFLOP/s devices)", {
            "devices": {"distribution": "lognormal", "mean_flops": 5e11, "spread": 0.5}, "bandwidth_hz": 1e6}),
    ]
    for label, base in scenarios:
        eq_t, _ = round_times(NetworkConfig(**base, allocation="equal"), jobs, rounds)
        mm_t, mm_d = round_times(NetworkConfig(**base, allocation="min_max_latency"), jobs, rounds)
        rows.append([label, "equal", eq_t, 0.0, 1.0])
        rows.append([label, "min_max_latency", mm_t, mm_d, mm_t / eq_t])
        deadline = 0.9 * mm_t
        t, d = round_times(NetworkConfig(**base, allocation="min_max_latency", deadline_s=deadline), jobs, rounds)
        rows.append([label, f"min_max_latency + deadline {deadline:.1f} s", t, d, t / eq_t])
    out = [f"SmolLM2-135M LoRA r=8: {flops / 1e12:.2f} TFLOP per local step, {nbytes / 2**20:.2f} MiB adapter; "
           f"mean over {rounds} fading rounds"]
    out.append(_common.table(["scenario", "allocation / selection", "round time (s)", "clients dropped / round",
                              "vs equal"], rows))
    return "\n".join(out)


def ota_table(rounds: int) -> str:
    from fedintel.experiment import run_experiment
    from fedintel.tracking.checkpoint import latest_checkpoint

    def cfg(agg: dict, run: str, tx_power_dbm: float = 23.0) -> dict:
        return parse_config({
            "name": run, "model": {"name": "tiny-llama"},
            "data": {"dataset": "chatterbot", "max_length": 32, "samples_per_client": 24, "global_eval_samples": 32},
            "federation": {"rounds": rounds, "num_clients": 8, "clients_per_round": 8, "local_steps": 2,
                           "batch_size": 4, "micro_batch_size": 4, "lr": 0.01},
            "eval": {"max_samples": 32, "per_client": False}, "aggregation": agg,
            "network": {"tx_power_dbm": tx_power_dbm},
            "output": {"dir": tempfile.mkdtemp(), "save_adapter": False},
        })

    digital = run_experiment(cfg({"rule": "fedavg"}, "digital"))
    ref = latest_checkpoint(digital.run_dir)["state"]["global"]
    rows = [["digital FedAvg", 23, "-", digital.final["eval_loss"], 0.0]]
    for power in (0.0, 10.0, 23.0):
        res = run_experiment(cfg({"rule": "ota"}, f"ota{power:g}", power))
        st = latest_checkpoint(res.run_dir)["state"]["global"]
        dist = math.sqrt(sum(float((st[k] - ref[k]).double().pow(2).sum()) for k in ref))
        norm = math.sqrt(sum(float(ref[k].double().pow(2).sum()) for k in ref))
        truncated = np.mean([r["ota_truncated"] / r["ota_clients"] for r in res.rounds[1:]])
        rows.append(["over-the-air", power, f"{100 * truncated:.0f} %", res.final["eval_loss"], dist / norm])
    return (f"tiny-llama on chatterbot, 8 clients, {rounds} rounds, 100 m cell\n"
            + _common.table(["aggregation", "tx power (dBm)", "truncated", "final eval loss",
                             "||w - w_digital|| / ||w_digital||"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--ota-rounds", type=int, default=3)
    args = ap.parse_args()
    if args.rounds:
        print("## Bandwidth allocation and selection (paper setup)\n")
        print(allocation_table(args.rounds))
    if args.ota_rounds:
        print("\n## Over-the-air vs digital aggregation\n")
        print(ota_table(args.ota_rounds))


if __name__ == "__main__":
    main()
