"""The three schemes against FL-LoRA on heterogeneous clients built from real domains (issue #4).

* CFL-LoRA vs FL-LoRA: generation over 4 text domains (SmolLM2) and sentiment over 4 domains (MiniLM);
  per-domain eval loss and rounds CFL needs to reach FL's final loss.
* Async (FedAsync) vs sync under stragglers (lognormal device speeds): simulated time to a target loss.
* Hierarchical (2 edge servers, cloud every 2 rounds) vs flat: bytes reaching the cloud, time to target.
* Exact vs naive LoRA aggregation: aggregation error and final loss.

    python benchmarks/schemes.py [--rounds 4] [--layers N]     # --layers N keeps SmolLM2's first N layers

Runs with the same config are made once and shared (FL-LoRA on the generation domains is also the naive-LoRA
run; sync FedAvg under stragglers is also the flat baseline of the hierarchical comparison).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from fedintel.tracking.plots import plot_compare


def base(args: argparse.Namespace, **sections: dict) -> dict:
    raw = {
        "model": {"name": "smollm2-135m", "num_layers": args.layers},
        "data": {"dataset": "generation4", "max_length": 64, "samples_per_client": 48, "global_eval_samples": 32,
                 "partition": {"method": "by_domain"}},
        "federation": {"rounds": args.rounds, "num_clients": 8, "clients_per_round": 8, "local_steps": 2,
                       "batch_size": 8, "micro_batch_size": 8, "lr": 3e-3, "seed": 0},
        "eval": {"max_samples": 16},
        "aggregation": {"lora": "naive"},
        "network": {"devices": {"distribution": "lognormal", "mean_flops": 5e10, "spread": 0.5}},
        "output": {"dir": OUT_RUNS, "save_adapter": False},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


OUT_RUNS = str(_common.OUT / "schemes" / "runs")


def run(raw: dict, name: str) -> list[dict]:
    """Per-round metrics of ``raw``, each config run once (a same-config run under another name is reused)."""
    return _common.cached_run(raw, name, Path(OUT_RUNS), any_name=True)


def first_round_reaching(rounds: list[dict], key: str, target: float) -> int | str:
    for r in rounds:
        if key in r and r[key] <= target:
            return int(r["round"])
    return "not reached"


def time_to(rounds: list[dict], key: str, target: float) -> float | str:
    for r in rounds:
        if key in r and r[key] <= target:
            return r["sim_time_s"]
    return "not reached"


def cfl_vs_fl(args: argparse.Namespace, out: Path) -> str:
    lines = []
    for task, extra in [
        ("generation (SmolLM2, 4 text domains)", {}),
        ("classification (MiniLM, VADER 4 domains)", {
            "model": {"name": "minilm-l6", "task": "classification", "num_labels": 2, "num_layers": None},
            "data": {"dataset": "vader", "samples_per_client": 96},
            "federation": {"local_steps": 4, "rounds": args.cls_rounds},
        }),
    ]:
        fl = run(base(args, **extra), "fl-lora")
        clustered = {**extra, "federation": {**extra.get("federation", {}), "scheme": "clustered"}}
        cfl = run(base(args, **clustered, clustering={"method": "similarity", "num_clusters": 4}), "cfl-lora")
        key = "client_eval_loss"
        doms = sorted(k.split("/", 1)[1] for k in fl[-1] if k.startswith("eval_loss/"))
        rows = [[d, fl[-1][f"eval_loss/{d}"], cfl[-1][f"eval_loss/{d}"]] for d in doms]
        rows.append(["mean over domains", fl[-1]["eval_loss_domain_mean"], cfl[-1]["eval_loss_domain_mean"]])
        rows.append(["clients' own eval sets", fl[-1][key], cfl[-1][key]])
        if "eval_accuracy" in fl[-1]:
            rows.append(["accuracy (mean over domains)", fl[-1]["eval_accuracy"], cfl[-1]["eval_accuracy"]])
        reach = first_round_reaching(cfl, "eval_loss_domain_mean", fl[-1]["eval_loss_domain_mean"])
        rounds = len(fl) - 1
        lines.append(f"### CFL-LoRA vs FL-LoRA, {task}, {rounds} rounds\n")
        lines.append(_common.table(["final eval loss on", "FL-LoRA", "CFL-LoRA"], rows))
        lines.append(f"\nCFL-LoRA reaches FL-LoRA's final domain-mean loss at round {reach} of {rounds}; "
                     f"cluster purity {cfl[-1].get('cluster_purity', float('nan')):.2f}.\n")
        plot_compare({"FL-LoRA": [(r["round"], r["eval_loss_domain_mean"]) for r in fl],
                      "CFL-LoRA": [(r["round"], r["eval_loss_domain_mean"]) for r in cfl]},
                     out / f"cfl_vs_fl_{'gen' if not extra else 'cls'}.png", "round", "eval loss (domain mean)", task)
    return "\n".join(lines)


STRAGGLERS = {"devices": {"distribution": "lognormal", "mean_flops": 5e10, "spread": 1.2}}
IID = {"dataset": "chatterbot", "partition": {"method": "iid"}}


def async_vs_sync(args: argparse.Namespace, out: Path) -> str:
    sync = run(base(args, data=IID, network=STRAGGLERS), "sync")
    asy = run(base(args, data=IID, network=STRAGGLERS, federation={"scheme": "async"},
                   **{"async": {"mode": "fedasync", "concurrency": 8, "alpha": 0.6, "staleness": "polynomial"}}), "async")
    target = max(min(r["eval_loss"] for r in sync), min(r["eval_loss"] for r in asy))
    ts, ta = time_to(sync, "eval_loss", target), time_to(asy, "eval_loss", target)
    plot_compare({"sync FedAvg": [(r["sim_time_s"], r["eval_loss"]) for r in sync],
                  "async FedAsync": [(r["sim_time_s"], r["eval_loss"]) for r in asy]},
                 out / "async_vs_sync.png", "simulated time (s)", "eval loss", "stragglers: lognormal spread 1.2")
    rows = [["sync FedAvg", ts, sync[-1]["sim_time_s"], sync[-1]["eval_loss"]],
            ["async FedAsync", ta, asy[-1]["sim_time_s"], asy[-1]["eval_loss"]]]
    ratio = ta / ts if isinstance(ta, float) and isinstance(ts, float) and ts > 0 else float("nan")
    return ("### Async vs sync under stragglers (8 clients, same number of client updates)\n\n"
            + _common.table(["scheme", f"sim time to loss {target:.3f} (s)", "total sim time (s)", "final eval loss"], rows)
            + f"\n\nasync / sync time to target: {ratio:.2f}\n")


def hier_vs_flat(args: argparse.Namespace, out: Path) -> str:
    flat = run(base(args, data=IID, network=STRAGGLERS), "sync")
    hier = run(base(args, data=IID, federation={"scheme": "hierarchical"}, network={**STRAGGLERS, "edge_servers": 2},
                    hierarchy={"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2}), "hier")
    target = max(min(r["eval_loss"] for r in flat), min(r["eval_loss"] for r in hier))
    rows = [[name, rs[-1]["cum_bytes_cloud"] / 2**20, time_to(rs, "eval_loss", target), rs[-1]["eval_loss"]]
            for name, rs in (("flat FedAvg", flat), ("hierarchical (2 edges, kappa 2)", hier))]
    return ("### Hierarchical vs flat\n\n"
            + _common.table(["scheme", "MiB reaching the cloud", f"sim time to loss {target:.3f} (s)", "final eval loss"], rows)
            + f"\n\ncloud traffic ratio: {rows[1][1] / rows[0][1]:.2f}\n")


def exact_vs_naive(args: argparse.Namespace, out: Path) -> str:
    rows = []
    for mode in ("naive", "exact"):
        rs = run(base(args, aggregation={"lora": mode}), f"lora-{mode}")
        errs = [r.get(f"lora_{mode}_error") for r in rs[1:]]
        naive_errs = [r.get("lora_naive_error") for r in rs[1:]]
        rows.append([mode, sum(e for e in errs if e is not None) / len(errs),
                     sum(e for e in naive_errs if e is not None) / len(naive_errs), rs[-1]["eval_loss_domain_mean"]])
    return ("### Exact vs naive LoRA aggregation (generation, 4 domains)\n\n"
            + _common.table(["aggregation", "its error vs mean(B·A) (mean over rounds)",
                             "naive error on the same updates", "final eval loss (domain mean)"], rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None,
                    help="keep only SmolLM2's first N layers (default: the whole model; a truncated model starts "
                         "far from its pretrained quality)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the SmolLM2 runs (default 4)")
    ap.add_argument("--cls-rounds", type=int, default=12, help="rounds of the (cheaper) MiniLM classification runs")
    ap.add_argument("--only", choices=["cfl", "async", "hier", "lora"], nargs="*")
    args = ap.parse_args()
    out = _common.OUT / "schemes"
    out.mkdir(parents=True, exist_ok=True)
    parts = {"cfl": cfl_vs_fl, "async": async_vs_sync, "hier": hier_vs_flat, "lora": exact_vs_naive}
    model = f"SmolLM2-135M first {args.layers} layers" if args.layers else "SmolLM2-135M-Instruct (whole model)"
    print(f"{model}, LoRA r=8, 8 clients, 2 local steps of 8 x 64 tokens, {args.rounds} rounds; plots in {out}\n")
    for name in args.only or parts:
        print(parts[name](args, out), flush=True)


if __name__ == "__main__":
    main()
