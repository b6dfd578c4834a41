"""Each client's private shard as a file on its own SuperNode.

``write_shards(cfg, out)`` runs fedintel's deterministic partition (the very one the local engine uses)
and writes ``out/client_<id>.jsonl`` (one row per example: ``text``, ``label`` as the class index for
classification, ``domain``, ``split`` = ``train``/``eval``) plus ``out/manifest.json``. Copy a client's file
and the manifest to the machine that hosts it; the SuperNode reads only the shards named in its
``client-ids`` node config, through ``datasets.load_dataset("json", ...)``, and tokenises them itself with
the experiment's tokenizer and ``data.max_length``, exactly as the local engine does.

The manifest's ``partition_key`` is a hash of everything that decides which rows a client gets (the
``data`` section except ``max_length``, ``num_clients``, ``seed`` and the task). The server checks it at
discovery, and checks a fingerprint of every tokenised shard before accepting an update, so a node with
stale or foreign data is refused with a message that says to re-run ``fedintel deploy partition``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedintel.config import ExperimentConfig
from fedintel.errors import FedintelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedintel.data.tokenize import TokenizedSet

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ShardError(FedintelError, FileNotFoundError):
    """A node's shard is missing or does not belong to the experiment; the message says what to do."""


def partition_key(cfg: ExperimentConfig) -> str:
    """Hash of the settings that decide every client's rows (stable across Python runs)."""
    data = cfg.data.model_dump(mode="json")
    data.pop("max_length", None)  # tokenisation only: the node applies it
    blob = {"data": data, "num_clients": cfg.federation.num_clients, "seed": cfg.federation.seed, "task": cfg.model.task}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def shard_path(data_dir: str | Path, client_id: int) -> Path:
    """``data_dir/client_<id>.jsonl``."""
    return Path(data_dir) / f"client_{int(client_id)}.jsonl"


def write_shards(cfg: ExperimentConfig, out: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Partition ``cfg``'s data as the local engine does and write one JSONL file per client into ``out``."""
    from fedintel.data.federated import build_federated_data, load_records

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg)
    d = cfg.data
    data = build_federated_data(d, tokenizer, cfg.model.task, cfg.federation.num_clients, cfg.federation.seed)
    rows = load_records(d)
    clients: dict[str, dict[str, int]] = {}
    for c in data.clients:
        lines = []
        for split, idx, ts in (("train", c.train_rows, c.train), ("eval", c.eval_rows, c.eval)):
            for pos, i in enumerate(idx):
                r = rows[int(i)]
                row: dict[str, Any] = {"text": str(r[d.text_field]), "domain": str(r.get(d.domain_field, "all")), "split": split}
                if ts.labels is not None:
                    row["label"] = int(ts.labels[pos])
                lines.append(json.dumps(row, ensure_ascii=False))
        shard_path(out, c.client_id).write_text("\n".join(lines) + "\n", encoding="utf-8")
        clients[str(c.client_id)] = {"train": len(c.train_rows), "eval": len(c.eval_rows)}
    manifest = {
        "format": FORMAT_VERSION, "experiment": cfg.name, "partition_key": partition_key(cfg), "task": cfg.model.task,
        "num_clients": cfg.federation.num_clients, "label_names": data.label_names, "clients": clients,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("wrote %d client shards to %s", len(data.clients), out)
    return out


def load_tokenizer(cfg: ExperimentConfig) -> PreTrainedTokenizerBase:
    """The experiment's tokenizer (loads the base model once; the model is discarded)."""
    from fedintel.models.loader import load_base_model

    return load_base_model(cfg.model).tokenizer


@dataclass
class Manifest:
    """What ``manifest.json`` in a node's data directory says."""

    partition_key: str
    num_clients: int
    task: str

    @classmethod
    def read(cls, data_dir: str | Path) -> Manifest:
        path = Path(data_dir) / MANIFEST
        if not path.is_file():
            raise ShardError(f"{path} is missing; copy it from the output of `fedintel deploy partition`")
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT_VERSION:
            raise ShardError(f"{path}: format {raw.get('format')} is not {FORMAT_VERSION}; re-run `fedintel deploy partition`")
        return cls(str(raw["partition_key"]), int(raw["num_clients"]), str(raw["task"]))


def hosted_clients(data_dir: str | Path) -> list[int]:
    """Client ids whose shard files are in ``data_dir``."""
    ids = []
    for p in Path(data_dir).glob("client_*.jsonl"):
        try:
            ids.append(int(p.stem.removeprefix("client_")))
        except ValueError:
            continue
    return sorted(ids)


def load_shard(
    data_dir: str | Path, client_id: int, tokenizer: PreTrainedTokenizerBase, max_length: int, task: str,
    split: str = "train", cache_dir: str | Path | None = None,
) -> TokenizedSet:
    """Read ``client_<id>.jsonl`` with ``datasets.load_dataset("json")`` and tokenise its ``split`` rows."""
    import datasets

    from fedintel.data.tokenize import tokenize

    path = shard_path(data_dir, client_id)
    if not path.is_file():
        raise ShardError(f"{path} is missing: this SuperNode has no shard for client {client_id}")
    datasets.disable_progress_bars()
    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(cache_dir) if cache_dir else None)
    rows = [r for r in ds.to_list() if r.get("split", "train") == split]
    texts = [str(r["text"]) for r in rows]
    labels = [int(r["label"]) for r in rows] if task == "classification" else None
    return tokenize(texts, tokenizer, max_length, labels)
