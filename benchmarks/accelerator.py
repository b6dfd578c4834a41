"""The client loop on whatever device is here: throughput, utilisation and memory per precision.

In one run, on the device ``runtime.device: auto`` picks (or ``--device``):

1. the device's matmul peak, measured now in fp32 and bf16 (GFLOP/s);
2. per precision (fp32, bf16, 4-bit NF4 when bitsandbytes is installed), each in its own process so peak
   memory is its own: fedintel's client loop (``train_local``) against a minimal PEFT + torch loop in the same
   precision, interleaved; model FLOP utilisation (MFU: the model's training FLOPs per second over the matmul
   peak of that precision) and peak memory (CUDA: max allocated; CPU: peak RSS); and a Hugging Face
   ``Trainer`` client that reloads the model for every client, as FlowerTune's and OpenFedLLM's clients do;
3. the quickstart workload (examples/quickstart.yaml) end to end in fp32 and bf16: seconds per round and the
   final eval loss.

    python benchmarks/accelerator.py [--device auto] [--steps 3] [--repeats 2] [--quickstart-rounds 3]

Targets (issue #14): on the CPU, bf16 >= 1.4x fp32 per quickstart round with the final loss within 2 %, and the
client loop >= 0.95x the minimal loop in bf16; on an accelerator, >= 0.95x the minimal loop and >= 2x the
reloading Trainer client.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch

from fedintel.config import DataConfig, ModelConfig, RuntimeConfig, load_config
from fedintel.data.federated import build_federated_data
from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.models.loader import load_base_model
from fedintel.models.peft_builder import AdapterSlot, build_peft_model
from fedintel.models.peft_methods import LoraPeftConfig
from fedintel.runtime import Runtime, resolve_runtime
from fedintel.training.client import LocalTrainSpec, batch_order, train_local
from fedintel.training.flops import ModelShape, train_flops

PRECISIONS = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "4bit": ("bfloat16", "4bit")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of an n^3 matmul in ``dtype`` on ``device`` (n = 2048 on a CPU, 8192 on a GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3 if device.type == "cpu" else 10):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def minimal_loop(slot: AdapterSlot, start, data: TokenizedSet, steps: int, bs: int, pad: int, rt: Runtime) -> int:
    """The hand-written baseline in the same precision: autocast forward, backward, AdamW step."""
    slot.set(start)
    model = slot.model
    opt = torch.optim.AdamW(slot.params.values(), lr=2e-4)
    model.train()
    tokens = 0
    for idx in batch_order(len(data), bs, steps, seed=0):
        batch = rt.to_device(collate(data, idx, pad, "causal_lm"))
        with rt.autocast():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    model.eval()
    sync(rt.device)
    return tokens


def reloading_trainer_client(mcfg: ModelConfig, rt: Runtime, data: TokenizedSet, steps: int, bs: int, pad: int) -> int:
    """One client as FlowerTune / OpenFedLLM run it: load the base, wrap it with PEFT, train with ``Trainer``."""
    pm = build_peft_model(load_base_model(mcfg, rt).model, LoraPeftConfig(r=8), "causal_lm")
    tokens = _common.trainer_train(pm, data, steps, bs, pad, tempfile.mkdtemp(), use_cpu=rt.device.type == "cpu",
                                   bf16=rt.dtype == torch.bfloat16)
    sync(rt.device)
    return tokens


def one_precision(args: argparse.Namespace) -> dict:
    """Measure one precision in this process; returns the row as a dict (printed as JSON)."""
    dtype, quant = PRECISIONS[args.one]
    rt = resolve_runtime(RuntimeConfig(device=args.device, dtype=dtype, threads=args.threads))
    mcfg = ModelConfig(name=args.model, quantization=quant)
    lm = load_base_model(mcfg, rt)
    pm = build_peft_model(lm.model, LoraPeftConfig(r=8), "causal_lm")
    slot = AdapterSlot(pm, rt)
    start = slot.get()
    fd = build_federated_data(DataConfig(dataset="technical", samples_per_client=96, max_length=args.seq,
                                         global_eval_samples=4, eval_fraction=0.0), lm.tokenizer, "causal_lm", 1, 0)
    data = TokenizedSet([s for s in fd.clients[0].train.input_ids if len(s) == args.seq])  # full-length only
    pad = lm.tokenizer.pad_token_id
    steps = args.steps if quant == "none" or rt.device.type != "cpu" else 1  # 4-bit on a CPU is slow
    spec = LocalTrainSpec(steps=steps, batch_size=args.batch, micro_batch_size=args.batch, lr=2e-4, max_grad_norm=None)
    fns = {
        "fedintel": lambda: train_local(slot, start, data, spec, client_id=0, base_version=0, seed=0, pad_id=pad,
                                        task="causal_lm").tokens,
        "minimal": lambda: minimal_loop(slot, start, data, steps, args.batch, pad, rt),
    }
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    for fn in fns.values():  # warm-up
        fn()
        sync(rt.device)
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            tokens = fn()
            sync(rt.device)
            rates[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    shape = ModelShape.of(pm)
    flops_per_token = train_flops(shape, args.seq, args.seq) / args.seq
    peak = matmul_peak(rt.device, torch.float32 if dtype == "float32" else torch.bfloat16)
    row = {
        "precision": args.one, "device": str(rt.device), "fedintel_tok_s": med["fedintel"],
        "minimal_tok_s": med["minimal"], "mfu": med["fedintel"] * flops_per_token / (peak * 1e9), "peak_gflops": peak,
    }
    if rt.device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(rt.device) / 2**20
    else:
        row["peak_mem_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.no_trainer:
        t0 = time.perf_counter()
        tokens = reloading_trainer_client(mcfg, rt, data, steps, args.batch, pad)
        row["trainer_reload_tok_s"] = tokens / (time.perf_counter() - t0)
    return row


def quickstart(device: str, dtype: str, rounds: int, threads: int | None) -> dict:
    """The quickstart workload end to end: mean seconds per round (rounds 1..R) and the final eval loss."""
    from fedintel.experiment import run_experiment

    overrides = [f"runtime.device={device}", f"runtime.dtype={dtype}", f"federation.rounds={rounds}",
                 f"output.dir={tempfile.mkdtemp()}"] + ([f"runtime.threads={threads}"] if threads else [])
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml", overrides)
    res = run_experiment(cfg)
    walls = [r["wall_s"] for r in res.rounds if r.get("round", 0) >= 1 and "wall_s" in r]
    return {"s_per_round": statistics.mean(walls), "final_eval_loss": res.rounds[-1]["eval_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precisions", default="fp32,bf16,4bit")
    ap.add_argument("--quickstart-rounds", type=int, default=3, help="0 skips the end-to-end comparison")
    ap.add_argument("--no-trainer", action="store_true", help="skip the reloading Trainer client")
    ap.add_argument("--one", choices=sorted(PRECISIONS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_precision(args)))
        return

    rt = resolve_runtime(RuntimeConfig(device=args.device, threads=args.threads))
    name = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {rt.device} ({name}); model {args.model}, LoRA r=8 (q,v), micro-batch {args.batch} x {args.seq} "
          f"tokens, {args.steps} steps, {args.repeats} interleaved repeats\n")
    peaks = {d: matmul_peak(rt.device, getattr(torch, d)) for d in ("float32", "bfloat16")}
    print(_common.table(["matmul peak", "GFLOP/s"], [[k, v] for k, v in peaks.items()]) + "\n")
    rows = []
    for prec in args.precisions.split(","):
        if prec == "4bit":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                print("4bit: skipped (bitsandbytes is not installed; pip install 'fedintel[gpu]')")
                continue
        cmd = [sys.executable, __file__, "--one", prec, "--device", args.device, "--model", args.model,
               "--steps", str(args.steps), "--repeats", str(args.repeats), "--batch", str(args.batch),
               "--seq", str(args.seq)] + (["--threads", str(args.threads)] if args.threads else []) \
            + (["--no-trainer"] if args.no_trainer else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{prec}: failed\n{out.stderr[-1500:]}")
            continue
        rows.append(json.loads(line[7:]))
    headers = ["precision", "fedintel tokens/s", "minimal loop tokens/s", "fedintel / minimal", "MFU",
               "peak memory (MiB)", "reloading Trainer tokens/s", "fedintel / Trainer"]
    print(_common.table(headers, [[
        r["precision"], r["fedintel_tok_s"], r["minimal_tok_s"], r["fedintel_tok_s"] / r["minimal_tok_s"],
        f"{100 * r['mfu']:.1f} %", r["peak_mem_mib"], r.get("trainer_reload_tok_s", float("nan")),
        r["fedintel_tok_s"] / r["trainer_reload_tok_s"] if "trainer_reload_tok_s" in r else float("nan"),
    ] for r in rows]) + "\n")
    if args.quickstart_rounds:
        q = {d: quickstart(args.device, d, args.quickstart_rounds, args.threads) for d in ("float32", "bfloat16")}
        print(_common.table(
            ["quickstart workload", "s / round", "speed-up vs fp32", "final eval loss", "vs fp32"],
            [[d, q[d]["s_per_round"], q["float32"]["s_per_round"] / q[d]["s_per_round"], q[d]["final_eval_loss"],
              f"{100 * (q[d]['final_eval_loss'] / q['float32']['final_eval_loss'] - 1):+.2f} %"] for d in q]))


if __name__ == "__main__":
    main()
