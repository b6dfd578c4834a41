"""fedintel's Flower ClientApp: trains one client on the SuperNode that holds its shard.

The SuperNode's node config says where the node's private data lives and which clients it hosts::

    flower-supernode ... --node-config 'data-dir="/data/fedintel" client-ids="0,3" cache-dir="/var/cache/fedintel"'

- ``data-dir`` (required): directory with ``client_<id>.jsonl`` and ``manifest.json`` from
  ``fedintel deploy partition``;
- ``client-ids`` (optional): comma-separated ids (or one int) this node hosts; default: every shard in
  ``data-dir``;
- ``cache-dir`` (optional): the node's fedintel cache (``FEDINTEL_CACHE``): base models are kept there as
  fp32 safetensors, so each new ClientApp process loads them from local disk in a fraction of a second;
- ``threads`` (optional): torch threads of the ClientApp process.

On a ``train`` message the app builds the base model and PEFT wrapper from the experiment carried in the
message (once per process: Flower starts a fresh process per message, so the cache that matters is the
on-disk one), loads only the requested client's shard, checks its fingerprint against the server's, runs
:func:`fedintel.training.client.train_local` with the seed the server computed for the job (as :class:`~fedintel.engines.local.LocalEngine` does)
and replies with the adapter delta and metrics. On an ``evaluate`` message it scores the adapters carried in
the message on the client's ``train`` or ``eval`` rows (per-client evaluation, IFCA's cluster pick) with
:func:`fedintel.training.job.run_eval_job`, as the local engine does, and replies with the numbers only. The data
never leaves the node.

On a ``query`` message (discovery) it answers which clients it hosts, without importing torch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedintel.engines.flower import messages as m
from fedintel.errors import FedintelError

log = logging.getLogger(__name__)

app = ClientApp()


class NodeConfigError(FedintelError, ValueError):
    """The SuperNode's ``--node-config`` is missing a key or has a bad value."""


@dataclass(frozen=True)
class NodeSettings:
    """The fedintel keys of a SuperNode's node config."""

    data_dir: Path
    client_ids: tuple[int, ...]
    cache_dir: Path | None = None
    threads: int | None = None

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> NodeSettings:
        from fedintel.engines.flower.shards import hosted_clients

        if "data-dir" not in node_config:
            raise NodeConfigError(
                "this SuperNode has no 'data-dir' in its --node-config; start it with "
                "--node-config 'data-dir=\"DIR\" client-ids=\"0\"' (see `fedintel deploy supernode --help`)")
        data_dir = Path(str(node_config["data-dir"])).expanduser()
        raw = node_config.get("client-ids", node_config.get("client-id"))
        if raw is None or str(raw).strip() == "":
            ids = tuple(hosted_clients(data_dir))
        else:
            try:
                ids = tuple(int(x) for x in str(raw).replace(" ", ",").split(",") if x != "")
            except ValueError:
                raise NodeConfigError(f"node config client-ids={raw!r}: expected comma-separated integers") from None
        cache = node_config.get("cache-dir")
        threads = node_config.get("threads")
        return cls(data_dir, ids, Path(str(cache)).expanduser() if cache else None, int(threads) if threads else None)

    def apply_env(self) -> None:
        """Point fedintel's cache at the node's own directory, keep every hub offline, quiet library warnings."""
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        if self.cache_dir is not None:
            os.environ["FEDINTEL_CACHE"] = str(self.cache_dir)
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(k, "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass
class _NodeModel:
    """The base model with its PEFT wrapper, as one ClientApp process keeps it."""

    key: str
    slot: Any
    shape: Any
    tokenizer: Any
    pad_id: int
    shards: dict[tuple[str, int, int, str], Any]
    """Tokenised shards by (file, mtime in ns, size, split): an edited file is read again."""


_MODEL: _NodeModel | None = None


def _model_for(cfg: Any, settings: NodeSettings) -> _NodeModel:
    """Build (or reuse, within this process) the model the experiment asks for."""
    global _MODEL
    key = json.dumps([cfg.model.model_dump(mode="json"), cfg.peft.model_dump(mode="json"), cfg.federation.seed,
                      cfg.runtime.device, cfg.runtime.dtype])
    if _MODEL is not None and _MODEL.key == key:
        return _MODEL
    from fedintel.models.client_model import build_client_model
    from fedintel.runtime import resolve_runtime
    from fedintel.training.flops import ModelShape

    cm = build_client_model(cfg, resolve_runtime(cfg.runtime, apply_threads=False))
    tok = cm.base.tokenizer
    _MODEL = _NodeModel(key, cm.slot, ModelShape.of(cm.peft_model), tok, int(tok.pad_token_id), {})
    return _MODEL


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Discovery: which clients this node hosts and which partition its data comes from."""
    from fedintel.engines.flower.shards import Manifest, ShardError

    try:
        settings = NodeSettings.from_node_config(dict(context.node_config))
        key = Manifest.read(settings.data_dir).partition_key
        missing = [c for c in settings.client_ids if not (settings.data_dir / f"client_{c}.jsonl").is_file()]
        error = f"no shard file for clients {missing} in {settings.data_dir}" if missing else ""
        if not settings.client_ids:
            error = f"no client_<id>.jsonl shard in {settings.data_dir}"
        return Message(m.hello_content([c for c in settings.client_ids if c not in missing], key, error), reply_to=msg)
    except (NodeConfigError, ShardError) as err:
        return Message(m.hello_content([], "", str(err)), reply_to=msg)


def _prepare(job: dict[str, Any], settings: NodeSettings, split: str = "train") -> tuple[Any, _NodeModel, Any, int]:
    """The experiment, model and client data a job asks for, after checking that this node holds that client's
    ``split`` rows exactly as the server partitioned them: ``(cfg, node model, data, client id)``."""
    cid = int(job["client-id"])
    if cid not in settings.client_ids:
        raise NodeConfigError(f"this SuperNode hosts clients {list(settings.client_ids)}, not client {cid}")

    import torch

    from fedintel.config import parse_config
    from fedintel.engines.flower.shards import Manifest, ShardError, partition_key

    cfg = parse_config(json.loads(str(job["experiment"])))
    threads = settings.threads or cfg.runtime.threads
    if threads:
        torch.set_num_threads(threads)
    if Manifest.read(settings.data_dir).partition_key != partition_key(cfg):
        raise ShardError(f"{settings.data_dir} holds another partition than this experiment's; "
                         "re-run `fedintel deploy partition` with the experiment file and copy the shards")
    node = _model_for(cfg, settings)
    data = _client_data(cfg, settings, node, cid, split)
    if m.shard_fingerprint(data.input_ids, data.labels) != job["shard-sha256"]:
        raise ShardError(f"client {cid}: the tokenised shard in {settings.data_dir} differs from the experiment's "
                         "(other rows, tokenizer or max_length); re-run `fedintel deploy partition`")
    return cfg, node, data, cid


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the client named in the message on this node's shard; reply with the delta and metrics."""
    t0 = time.perf_counter()
    settings = NodeSettings.from_node_config(dict(context.node_config))
    settings.apply_env()
    job = m.read_job(msg.content)

    from fedintel.training.client import TrainingDiverged
    from fedintel.types import TrainJob

    cfg, node, data, cid = _prepare(job, settings)
    train_job = TrainJob(cid, m.record_to_state(msg.content[m.ADAPTER_KEY]), int(job["version"]), int(job["round"]),
                         int(job.get("salt", 0)))
    t_ready = time.perf_counter()
    try:
        update = run_client_job(cfg, node, data, train_job, seed=int(job["seed"]))
    except TrainingDiverged as err:
        return Message(m.diverged_content(cid, str(err)), reply_to=msg)
    t_done = time.perf_counter()
    timings = {"node-setup-s": t_ready - t0, "node-train-s": t_done - t_ready}
    masked = None
    if cfg.privacy.secure_aggregation:  # only the masked words leave the node
        from fedintel.engines.flower.secagg import SECAGG_KEY, node_mask, secret_dir
        from fedintel.privacy.secure_aggregator import masking_input

        if SECAGG_KEY not in msg.content:
            raise m.MessageError("the experiment asks for secure aggregation but the job has no secagg record")
        masked = node_mask(msg.content[SECAGG_KEY], masking_input(cfg, update.delta, update.num_samples),
                           secret_dir(settings.cache_dir))
        update.wire_bytes = None  # what travels is the masked vector, counted as such
    return Message(m.reply_content(update, timings, masked), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the adapters in the message on the client's own rows; reply with one metrics record per adapter."""
    settings = NodeSettings.from_node_config(dict(context.node_config))
    settings.apply_env()
    job, states = m.read_eval_job(msg.content)

    from fedintel.training.job import run_eval_job
    from fedintel.types import EvalJob

    cfg, node, data, cid = _prepare(job, settings, str(job["split"]))
    eval_job = EvalJob(cid, states, int(job["round"]), job["split"], job["measure"])
    from fedintel.trust import build_client_mods

    result = run_eval_job(cfg, node.slot, data, eval_job, pad_id=node.pad_id, mods=build_client_mods(cfg))
    return Message(m.eval_reply_content(result), reply_to=msg)


def _secagg_step(step: str, msg: Message, context: Context) -> Message:
    from fedintel.engines.flower import secagg

    settings = NodeSettings.from_node_config(dict(context.node_config))
    cid = int(msg.content[secagg.SECAGG_KEY]["client-id"])
    if cid not in settings.client_ids:
        raise NodeConfigError(f"this SuperNode hosts clients {list(settings.client_ids)}, not client {cid}")
    handler = {"keys": secagg.node_keys, "shares": secagg.node_shares, "unmask": secagg.node_unmask}[step]
    return Message(handler(msg.content, secagg.secret_dir(settings.cache_dir)), reply_to=msg)


@app.query("secagg_keys")
def secagg_keys(msg: Message, context: Context) -> Message:
    """Secure aggregation step 1: fresh keys for this round (:mod:`fedintel.engines.flower.secagg`)."""
    return _secagg_step("keys", msg, context)


@app.query("secagg_shares")
def secagg_shares(msg: Message, context: Context) -> Message:
    """Secure aggregation step 2: Shamir shares, each sealed to its holder."""
    return _secagg_step("shares", msg, context)


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Secure aggregation step 4: reveal the shares that unmask the survivors' sum, then forget the session."""
    return _secagg_step("unmask", msg, context)


def _client_data(cfg: Any, settings: NodeSettings, node: _NodeModel, cid: int, split: str = "train") -> Any:
    """The client's tokenised ``train`` rows or held-out ``eval`` rows as partitioned (before its data mods), read
    once per file version."""
    from fedintel.engines.flower.shards import load_shard, shard_path

    path = shard_path(settings.data_dir, cid)
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0, split)
    if key not in node.shards:
        cache = settings.cache_dir / "datasets" if settings.cache_dir else None
        node.shards[key] = load_shard(settings.data_dir, cid, node.tokenizer, cfg.data.max_length, cfg.model.task,
                                      split=split, cache_dir=cache)
    return node.shards[key]


def run_client_job(cfg: Any, node: _NodeModel, data: Any, job: Any, seed: int) -> Any:
    """One client's work for ``job``: :func:`fedintel.training.job.run_train_job` with the experiment's client
    mods (a malicious client poisons its own data or update, local DP noises it), as the local engine does it."""
    from fedintel.training.job import run_train_job
    from fedintel.trust import build_client_mods

    return run_train_job(cfg, node.slot, data, job, seed=seed, pad_id=node.pad_id, shape=node.shape,
                         mods=build_client_mods(cfg))
