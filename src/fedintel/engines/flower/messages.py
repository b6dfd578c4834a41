"""What fedintel sends over Flower, and how it maps to fedintel's own values.

A training job travels as one Flower ``Message`` of type ``train`` whose :class:`~flwr.app.RecordDict` holds

- ``adapter``: the global adapter (:data:`~fedintel.types.AdapterState`) as an ``ArrayRecord``, one
  ``Array`` per tensor (raw little-endian numpy bytes, dtype and shape kept, so the round trip is exact);
- ``job``: a ``ConfigRecord`` with ``client-id``, ``round``, ``version``, ``salt``, ``seed`` (the job's
  training seed, computed by the server exactly as the local engine does), the experiment as JSON
  (``experiment``, a few KB) and ``shard-sha256``, the fingerprint of the client's tokenised training shard
  as the server computed it, so a node whose data does not match the experiment refuses to train.

The reply holds ``delta`` (the client's adapter minus the start, an ``ArrayRecord``) and ``result`` (a
``MetricRecord`` with ``num-samples``, ``train-loss``, ``steps``, ``tokens``, ``flops`` and node timings in
seconds). A client whose training loss diverged replies with ``status`` = ``diverged`` in ``outcome`` (a
``ConfigRecord``) so the server stops the run exactly as the local engine does.

Discovery uses a ``query`` message: each SuperNode answers with the client ids whose shards it holds.

This module imports torch lazily: the ``query`` path of the ClientApp must start in well under a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

if TYPE_CHECKING:
    from fedintel.engines.base import TrainJob
    from fedintel.types import AdapterState, Update

TRAIN = "train"
"""Message type of a training job (Flower's ``MessageType.TRAIN``)."""
HELLO = "query"
"""Message type of node discovery (Flower's ``MessageType.QUERY``)."""

ADAPTER_KEY = "adapter"
JOB_KEY = "job"
DELTA_KEY = "delta"
RESULT_KEY = "result"
OUTCOME_KEY = "outcome"
HOSTS_KEY = "hosts"

MESSAGE_TTL_S = 3600.0
"""Time to live of a job message on the SuperLink (seconds); the engine's own timeout is shorter."""


class ProtocolError(ValueError):
    """A reply does not have the shape this version of fedintel sends; the message says what is wrong."""


def state_to_record(state: AdapterState) -> ArrayRecord:
    """An adapter as an ``ArrayRecord`` (key order kept; tensors copied to contiguous CPU numpy)."""
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> AdapterState:
    """The inverse of :func:`state_to_record`: writable CPU tensors, bit-identical to the sender's."""
    import torch

    return {k: torch.from_numpy(arr.numpy().copy()) for k, arr in record.items()}


def shard_fingerprint(input_ids: Sequence[Sequence[int]]) -> str:
    """SHA-256 of a tokenised shard: equal on server and node iff the node tokenised the same rows."""
    h = hashlib.sha256()
    for ids in input_ids:
        h.update(json.dumps(list(ids), separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def job_content(job: TrainJob, experiment_json: str, fingerprint: str, seed: int) -> RecordDict:
    """The ``RecordDict`` of a training job; ``seed`` is the job's training seed (``job.seed(run_seed)``)."""
    return RecordDict(
        {
            ADAPTER_KEY: state_to_record(job.state),
            JOB_KEY: ConfigRecord(
                {
                    "client-id": int(job.client_id),
                    "round": int(job.round_idx),
                    "version": int(job.version),
                    "salt": int(getattr(job, "salt", 0)),
                    "seed": int(seed),
                    "experiment": experiment_json,
                    "shard-sha256": fingerprint,
                }
            ),
        }
    )


def read_job(content: RecordDict) -> dict[str, Any]:
    """The job fields of a training message (``client-id``, ``round``, ``version``, ``experiment``...)."""
    if JOB_KEY not in content or ADAPTER_KEY not in content:
        raise ProtocolError(f"a train message needs '{JOB_KEY}' and '{ADAPTER_KEY}' records, got {sorted(content)}")
    return dict(content[JOB_KEY])


def reply_content(update: Update, timings: dict[str, float] | None = None) -> RecordDict:
    """The ``RecordDict`` a node sends back after training."""
    result = {
        "num-samples": int(update.num_samples),
        "train-loss": float(update.train_loss),
        "steps": int(update.steps),
        "tokens": int(update.tokens),
        "flops": float(update.flops),
        "base-version": int(update.base_version),
    }
    result.update({k: float(v) for k, v in (timings or {}).items()})
    return RecordDict(
        {
            DELTA_KEY: state_to_record(update.delta),
            RESULT_KEY: MetricRecord(result),
            OUTCOME_KEY: ConfigRecord({"status": "ok", "client-id": int(update.client_id)}),
        }
    )


def diverged_content(client_id: int, reason: str) -> RecordDict:
    """The reply of a node whose training loss became NaN/Inf."""
    return RecordDict({OUTCOME_KEY: ConfigRecord({"status": "diverged", "client-id": int(client_id), "reason": reason})})


def outcome(reply: Message) -> tuple[str, str]:
    """``(status, reason)`` of a reply without an error: ``ok`` or ``diverged``."""
    rec = reply.content.get(OUTCOME_KEY)
    if rec is None:
        raise ProtocolError(f"reply has no '{OUTCOME_KEY}' record (records: {sorted(reply.content)})")
    return str(rec["status"]), str(rec.get("reason", ""))


def update_from_reply(reply: Message, client_id: int) -> Update:
    """The :class:`~fedintel.types.Update` carried by a successful training reply."""
    from fedintel.types import Update

    content = reply.content
    if DELTA_KEY not in content or RESULT_KEY not in content:
        raise ProtocolError(f"training reply lacks '{DELTA_KEY}'/'{RESULT_KEY}' (records: {sorted(content)})")
    res = dict(content[RESULT_KEY])
    got = int(content[OUTCOME_KEY]["client-id"]) if OUTCOME_KEY in content else client_id
    if got != client_id:
        raise ProtocolError(f"reply for client {got} arrived for a job of client {client_id}")
    timings = {k.replace("-", "_"): float(v) for k, v in res.items() if k.startswith("node-")}
    return Update(
        client_id=client_id,
        delta=record_to_state(content[DELTA_KEY]),
        num_samples=int(res["num-samples"]),
        base_version=int(res["base-version"]),
        train_loss=float(res["train-loss"]),
        steps=int(res["steps"]),
        tokens=int(res["tokens"]),
        flops=float(res["flops"]),
        metrics=timings,
    )


def hello_content(client_ids: Sequence[int], partition_key: str, error: str = "") -> RecordDict:
    """A node's answer to discovery: which clients it hosts, for which partition."""
    return RecordDict(
        {
            HOSTS_KEY: ConfigRecord(
                {"client-ids": [int(c) for c in client_ids] or [-1], "partition-key": partition_key, "error": error}
            )
        }
    )


def read_hello(reply: Message) -> tuple[list[int], str, str]:
    """``(client_ids, partition_key, error)`` of a discovery reply."""
    rec = reply.content.get(HOSTS_KEY)
    if rec is None:
        raise ProtocolError(f"discovery reply has no '{HOSTS_KEY}' record")
    ids = [int(c) for c in rec["client-ids"] if int(c) >= 0]
    return ids, str(rec["partition-key"]), str(rec.get("error", ""))
