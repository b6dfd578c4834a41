"""Client training throughput: fedintel's client loop vs a minimal PEFT+torch loop vs a HF Trainer client.

Same model (SmolLM2-135M-Instruct, LoRA r=8 on q/v), same batches (8 x 128 tokens of real text), same
optimizer (AdamW); the three loops are interleaved and repeated so they share the machine's state, and
the result is reported as ratios. Target (issue #2): fedintel >= 0.95x the minimal loop, faster than
Trainer (the client of OpenFedLLM / FlowerTune).

    python benchmarks/client_throughput.py [--steps 4] [--repeats 2] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common
import torch

from fedintel.config import DataConfig, ModelConfig
from fedintel.data.federated import build_federated_data
from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.models.loader import load_base_model
from fedintel.models.peft_builder import AdapterSlot, build_peft_model
from fedintel.models.peft_methods import LoraPeftConfig
from fedintel.training.client import LocalTrainSpec, batch_order, train_local


def minimal_loop(slot: AdapterSlot, start, data: TokenizedSet, steps: int, bs: int, pad: int) -> int:
    """The hand-written baseline: set adapter, AdamW, forward/backward/step."""
    slot.set(start)
    model = slot.model
    opt = torch.optim.AdamW(slot.params.values(), lr=2e-4)
    model.train()
    tokens = 0
    for idx in batch_order(len(data), bs, steps, seed=0):
        batch = collate(data, idx, pad, "causal_lm")
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    model.eval()
    return tokens


def trainer_loop(slot: AdapterSlot, start, data: TokenizedSet, steps: int, bs: int, pad: int, tmp: str) -> int:
    """A Hugging Face Trainer client, as OpenFedLLM/FlowerTune build theirs."""
    slot.set(start)
    tokens = _common.trainer_train(slot.model, data, steps, bs, pad, tmp)
    slot.model.eval()
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_base_model(ModelConfig(name=args.model))
    pm = build_peft_model(lm.model, LoraPeftConfig(r=8), "causal_lm")
    slot = AdapterSlot(pm)
    start = slot.get()
    fd = build_federated_data(
        DataConfig(dataset="technical", samples_per_client=64, max_length=args.seq, global_eval_samples=4,
                   eval_fraction=0.0), lm.tokenizer, "causal_lm", 1, seed=0)
    data = fd.clients[0].train
    # only full-length examples, so every loop sees batch x seq tokens
    data = TokenizedSet([s for s in data.input_ids if len(s) == args.seq])
    pad = lm.tokenizer.pad_token_id
    spec = LocalTrainSpec(steps=args.steps, batch_size=args.batch, micro_batch_size=args.batch, lr=2e-4, max_grad_norm=None)
    import tempfile

    tmp = tempfile.mkdtemp()
    runs: dict[str, list[float]] = {"fedintel": [], "minimal": [], "trainer": []}
    fns = {
        "fedintel": lambda: train_local(slot, start, data, spec, client_id=0, base_version=0, seed=0, pad_id=pad, task="causal_lm").tokens,
        "minimal": lambda: minimal_loop(slot, start, data, args.steps, args.batch, pad),
        "trainer": lambda: trainer_loop(slot, start, data, args.steps, args.batch, pad, tmp),
    }
    for name in fns:  # warm-up
        fns[name]()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            tokens = fn()
            runs[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"model {args.model}, LoRA r=8 (q,v), batch {args.batch} x {args.seq} tokens, {args.steps} steps, "
          f"{args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}")
    print(_common.table(["client loop", "tokens/s (median)", "ratio vs minimal"],
                        [[k, med[k], med[k] / med["minimal"]] for k in ("fedintel", "minimal", "trainer")]))


if __name__ == "__main__":
    main()
