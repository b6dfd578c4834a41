"""Helpers shared by the benchmark scripts: offline environment, markdown tables, output directory."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

OUT = Path(__file__).resolve().parent / "out"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table (what the README quotes)."""
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def cached_run(raw: dict, name: str, runs_dir: Path, any_name: bool = False) -> list[dict]:
    """Per-round metrics of the experiment ``raw``, run once: a finished run of the same config (same hash,
    in this process or an earlier one) is read back from its metrics store, so an interrupted benchmark picks
    up where it stopped. ``any_name``: reuse the same config run under another name too."""
    import hashlib
    import json
    import shutil
    import sys
    import time

    from fedintel.config import parse_config
    from fedintel.experiment import run_experiment
    from fedintel.tracking.store import finished_rounds

    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
    same = sorted(Path(runs_dir).glob(f"*-{digest}")) if any_name else []
    run_dir = same[0] if same else Path(runs_dir) / f"{name}-{digest}"
    done = finished_rounds(run_dir)
    if done is not None:
        return done
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run: start it again
    t0 = time.perf_counter()
    rounds = run_experiment(parse_config({**raw, "name": name}), run_dir).rounds
    print(f"  ran {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rounds


def trainer_train(model, data, steps: int, bs: int, pad: int, output_dir: str, *,  # noqa: ANN001
                  use_cpu: bool = True, bf16: bool = False) -> int:
    """Train ``model`` (a PEFT model) on ``data`` (a TokenizedSet of full-length examples) with Hugging Face's
    ``Trainer``, as OpenFedLLM and FlowerTune build their clients; returns the tokens trained."""
    import torch
    from transformers import Trainer, TrainingArguments

    from fedintel.data.tokenize import collate

    class Indices(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict:
            return {"idx": i}

    def collator(items: list[dict]) -> dict:
        return collate(data, [it["idx"] for it in items], pad, "causal_lm")

    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=bs, max_steps=steps, learning_rate=2e-4,
        use_cpu=use_cpu, bf16=bf16, report_to=[], save_strategy="no", logging_strategy="no",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    Trainer(model=model, args=args, train_dataset=Indices(), data_collator=collator).train()
    # Every example is full-length, so Trainer trained steps x batch x length tokens. (Counting in the collator
    # over-counts: accelerate's data loader fetches one batch ahead of the step it trains.)
    return steps * bs * len(data.input_ids[0])
