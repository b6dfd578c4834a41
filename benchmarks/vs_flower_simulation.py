"""fedintel's local engine vs Flower's simulation engine on the same FL-LoRA workload (issue #15).

The workload is the quickstart's (examples/quickstart.yaml): SmolLM2-135M-Instruct, LoRA r=8 on q/v (dropout
0.05), 8 clients with 100 chatterbot dialogues each (the same shards, tokenised once here), 3 rounds of 2 local
AdamW steps of 8 x 64 tokens, lr 2e-3, gradient clipping 1.0, FedAvg weighted by samples, evaluation of the
global adapter on the same 32 held-out examples after every round (per-client evaluation off on both sides, as
Flower's central evaluation has none).

- fedintel: ``run_experiment`` with the local engine, one process (all cores), one shared base model.
- Flower: ``flwr.simulation.run_simulation`` (flwr 1.41, Ray backend, 1 CPU per client actor: 2 actors at once
  on 2 cores) with a ``ClientApp`` written as the FlowerTune template writes it: every call loads the base model,
  builds the PEFT model, loads the received adapter, trains its shard with a plain PEFT loop (the same recipe) and
  replies with the adapter; a ``ServerApp`` runs ``FedAvg.start`` with a central ``evaluate_fn``.

Reported per engine: end-to-end wall time (process start of the run to final evaluation, model and data loading
included), mean time per round, peak memory (the sum of RSS over this process and all its descendants, Ray's
processes included, sampled every 200 ms; shared pages count once per process, so it over-states Ray a bit) and
the final evaluation loss (the same evaluation code on both sides). Target: fedintel faster end to end.

    python benchmarks/vs_flower_simulation.py            # the lead runs it on a quiet machine
    python benchmarks/vs_flower_simulation.py --quick    # smoke: tiny-llama, 2 clients, 1 round
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import _common
import psutil
import torch

from fedintel.config import ExperimentConfig, load_config
from fedintel.experiment import run_experiment
from fedintel.world import build_world

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


class TreeMemory:
    """Peak of the summed RSS of this process and its descendants (MiB), sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> TreeMemory:
        def run() -> None:
            while not self._stop.wait(self.every_s):
                self.peak = max(self.peak, self._rss())

        self.peak = self._rss()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def workload(quick: bool, out_dir: Path, extra: tuple[str, ...] = ()) -> ExperimentConfig:
    overrides = [*extra, "eval.per_client=false", "eval.at_start=true", f"output.dir={out_dir}", "output.save_adapter=false"]
    if quick:
        overrides += ["model.name=tiny-llama", "federation.num_clients=2", "federation.clients_per_round=2",
                      "federation.rounds=1", "data.samples_per_client=16", "eval.max_samples=8"]
    return load_config(QUICKSTART, overrides)


def run_fedintel(cfg: ExperimentConfig) -> dict[str, float]:
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        result = run_experiment(cfg)
        wall = time.perf_counter() - t0
    rounds = [r for r in result.rounds if r.get("round", 1) > 0 and "wall_s" in r]
    return {"wall_s": wall, "round_s": sum(r["wall_s"] for r in rounds) / len(rounds), "peak_mib": mem.mib,
            "eval_loss": result.rounds[-1]["eval_loss"]}


def flower_apps(cfg: ExperimentConfig, shards_path: Path, log: dict[str, Any]):  # noqa: ANN201
    """The ClientApp (FlowerTune's shape: load the model on every call, train, reply) and the ServerApp."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch

        from fedintel.data.tokenize import collate
        from fedintel.models.client_model import build_client_model
        from fedintel.runtime import CPU
        from fedintel.training.client import batch_order

        torch.set_num_threads(1)  # one CPU per actor
        partition = int(context.node_config["partition-id"])
        data = torch.load(shards_path, weights_only=False)["train"][partition]
        cm = build_client_model(cfg, CPU)  # the template loads the base model and adds the adapter per call
        model, f = cm.peft_model, cfg.federation
        cm.slot.set(msg.content["arrays"].to_torch_state_dict())
        params = list(cm.slot.params.values())
        optimizer = torch.optim.AdamW(params, lr=f.lr, weight_decay=f.weight_decay)
        model.train()
        losses, server_round = [], int(msg.content["config"]["server-round"])
        for idx in batch_order(len(data), f.batch_size, f.local_steps, seed=1000 * server_round + partition):
            batch = collate(data, idx, cm.base.tokenizer.pad_token_id, "causal_lm")
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, f.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        content = RecordDict({"arrays": ArrayRecord(cm.slot.get()),
                              "metrics": MetricRecord({"train_loss": sum(losses) / len(losses),
                                                       "num-examples": len(data)})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedintel.training.evaluate import evaluate

        world = build_world(cfg)  # the server's copy: initial adapter and central evaluation
        eval_set = torch.load(shards_path, weights_only=False)["eval"]

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            world.slot.set(arrays.to_torch_state_dict())
            m = evaluate(world.peft_model, eval_set, task="causal_lm", pad_id=world.pad_id,
                         batch_size=cfg.eval.batch_size, max_samples=cfg.eval.max_samples)
            log["evals"].append((time.perf_counter(), m["loss"]))
            return MetricRecord({"eval_loss": m["loss"]})

        n = cfg.federation.num_clients
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(world.initial_state),
                       num_rounds=cfg.federation.rounds, evaluate_fn=evaluate_fn)

    return client_app, server_app


def run_flower(cfg: ExperimentConfig, tmp: Path) -> dict[str, float] | str:
    if importlib.util.find_spec("ray") is None:
        return "not run: Flower's simulation engine needs Ray (pip install 'flwr[simulation]==1.41.*')"
    from flwr.simulation import run_simulation

    log: dict[str, Any] = {"evals": []}
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        world = build_world(cfg)  # the shards the ClientApps read (FlowerTune's FederatedDataset cache)
        shards = tmp / "shards.pt"
        torch.save({"train": [c.train for c in world.data.clients], "eval": world.data.global_eval}, shards)
        del world
        client_app, server_app = flower_apps(cfg, shards, log)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.federation.num_clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"include_dashboard": False}})
        wall = time.perf_counter() - t0
    stamps = [t for t, _ in log["evals"]]
    rounds = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"wall_s": wall, "round_s": sum(rounds) / max(1, len(rounds)), "peak_mib": mem.mib,
            "eval_loss": log["evals"][-1][1] if log["evals"] else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny-llama, 2 clients, 1 round")
    args = ap.parse_args()
    with TemporaryDirectory() as tmp:
        cfg = workload(args.quick, Path(tmp) / "runs")
        ours = run_fedintel(cfg)
        print("fedintel:", ours, flush=True)
        # the same parallelism as Flower's actors: 2 worker processes of one thread each (same numbers, by design)
        workers = run_fedintel(workload(args.quick, Path(tmp) / "runs-workers", ("runtime.workers=2",)))
        print("fedintel, 2 workers:", workers, flush=True)
        theirs = run_flower(cfg, Path(tmp))
        print("flower:", theirs, flush=True)
    rows = [["fedintel local engine", round(ours["wall_s"], 1), round(ours["round_s"], 2), round(ours["peak_mib"]),
             round(ours["eval_loss"], 4), 1.0],
            ["fedintel local engine, runtime.workers: 2", round(workers["wall_s"], 1), round(workers["round_s"], 2),
             round(workers["peak_mib"]), round(workers["eval_loss"], 4), round(workers["wall_s"] / ours["wall_s"], 2)]]
    if isinstance(theirs, dict):
        rows.append(["Flower simulation (Ray)", round(theirs["wall_s"], 1), round(theirs["round_s"], 2),
                     round(theirs["peak_mib"]), round(theirs["eval_loss"], 4),
                     round(theirs["wall_s"] / ours["wall_s"], 2)])
    else:
        rows.append(["Flower simulation (Ray)", theirs, "-", "-", "-", "-"])
    print(f"\n{cfg.model.name}, {cfg.federation.num_clients} clients, {cfg.federation.rounds} rounds:\n")
    print(_common.table(["engine", "end to end (s)", "s / round", "peak memory, process tree (MiB)",
                         "final eval loss", "wall x fedintel"], rows))


if __name__ == "__main__":
    main()
