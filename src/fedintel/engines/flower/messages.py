"""What fedintel sends over Flower, and how it maps to fedintel's own values.

A training job travels as one Flower ``Message`` of type ``train`` whose :class:`~flwr.app.RecordDict` holds

- ``adapter``: the global adapter (:data:`~fedintel.types.AdapterState`) as an ``ArrayRecord`` holding
  one flat ``Array`` per dtype and the layout (names, shapes, dtypes), so Flower moves a few objects instead
  of one per tensor; raw numpy bytes, so the round trip is exact (:func:`state_to_record`);
- ``job``: a ``ConfigRecord`` with ``client-id``, ``round``, ``version``, ``salt``, ``seed`` (the job's
  training seed, computed by the server exactly as the local engine does), the experiment as JSON
  (``experiment``, a few KB) and ``shard-sha256``, the fingerprint of the client's tokenised training shard
  (token ids and labels) as the server computed it, so a node whose data does not match refuses to train.

The reply holds ``delta`` (the client's adapter minus the start, an ``ArrayRecord``) and ``result`` (a
``MetricRecord`` with ``num-samples``, ``train-loss``, ``steps``, ``tokens``, ``flops``, ``wire-bytes`` for
rank-sliced LoRA uploads, and node timings in seconds). A client whose training loss diverged replies with ``status`` = ``diverged`` in ``outcome`` (a
``ConfigRecord``) so the server drops that client or stops the run (``federation.on_client_diverged``) exactly as
the local engine does. The decoders raise :class:`MessageError` for any malformed reply (missing or
non-numeric field, bad layout), which the engine turns into that client's failure.

An evaluation job (:class:`~fedintel.types.EvalJob`, Flower's ``configure_evaluate``) travels as a message of
type ``evaluate`` holding ``adapter-0``, ``adapter-1``... (the adapters to score, packed as above) and ``job``
(``client-id``, ``round``, ``split``, ``measure``, ``adapters``, ``experiment`` and the fingerprint of the
split it reads); the reply holds one ``MetricRecord`` per adapter (``eval-0``...: ``loss``, ``perplexity`` or
``accuracy``) and ``outcome``. The decoder checks their number, names and ranges (:func:`eval_result_from_reply`).

Discovery uses a ``query`` message: each SuperNode answers with the client ids whose shards it holds.

This module imports torch inside the functions that convert tensors, so the ``query`` path of the ClientApp
(and ``fedintel.engines``, whose ``__init__`` imports nothing) loads no torch; a test checks it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedintel.types import EvalResult, Update

if TYPE_CHECKING:
    from fedintel.types import AdapterState, EvalJob, TrainJob

TRAIN = "train"
"""Message type of a training job (Flower's ``MessageType.TRAIN``)."""
EVALUATE = "evaluate"
"""Message type of an evaluation job (Flower's ``MessageType.EVALUATE``)."""
HELLO = "query"
"""Message type of node discovery (Flower's ``MessageType.QUERY``)."""

ADAPTER_KEY = "adapter"
JOB_KEY = "job"
DELTA_KEY = "delta"
MASKED_KEY = "masked"
"""Under secure aggregation the reply holds this (the masked words) instead of ``delta``."""
RESULT_KEY = "result"
OUTCOME_KEY = "outcome"
HOSTS_KEY = "hosts"
LAYOUT_KEY = "layout"
PACKED_PREFIX = "packed:"
EVAL_ADAPTER_PREFIX = "adapter-"
EVAL_METRICS_PREFIX = "eval-"
EVAL_METRICS = {"metrics": ("loss", "perplexity", "accuracy"), "pick_loss": ("loss",)}
"""The metric names an evaluation reply may hold, per ``measure``."""

MESSAGE_TTL_S = 3600.0
"""Time to live of a job message on the SuperLink (seconds); the engine's own timeout is shorter."""


class MessageError(ValueError):
    """A reply does not have the shape this version of fedintel sends; the message says what is wrong."""


def state_to_record(state: AdapterState) -> ArrayRecord:
    """An adapter as an ``ArrayRecord``: one flat ``Array`` per dtype plus a ``layout`` entry.

    Flower moves every ``Array`` of a message as its own object (one HTTP request per object and hop), so a
    LoRA adapter of 120 tensors would cost ~500 requests per job; packed, it costs a handful. The layout
    (tensor names, shapes, dtypes, in order) travels as a uint8 ``Array`` of JSON. The round trip is exact.
    """

    layout = []
    groups: dict[str, list[Any]] = {}
    for k, v in state.items():
        a = v.detach().cpu().contiguous().numpy()
        layout.append({"name": k, "shape": list(a.shape), "dtype": str(a.dtype)})
        groups.setdefault(str(a.dtype), []).append(a.reshape(-1))
    record = ArrayRecord({f"{PACKED_PREFIX}{dt}": Array(np.concatenate(parts)) for dt, parts in groups.items()})
    record[LAYOUT_KEY] = Array(np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8).copy())
    return record


def record_to_state(record: ArrayRecord) -> AdapterState:
    """The inverse of :func:`state_to_record`: writable CPU tensors, bit-identical to the sender's.

    Raises :class:`MessageError` for anything malformed (not an ``ArrayRecord``, bad layout JSON, sizes).
    """
    if not isinstance(record, ArrayRecord):
        raise MessageError(f"adapter record is a {type(record).__name__}, expected an ArrayRecord")
    try:
        return _record_to_state(record)
    except MessageError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError, RuntimeError) as err:
        raise MessageError(f"malformed adapter record ({type(err).__name__}: {err})") from None


def _record_to_state(record: ArrayRecord) -> AdapterState:
    import torch

    if LAYOUT_KEY not in record:  # one Array per tensor (any Flower peer)
        return {k: torch.from_numpy(arr.numpy().copy()) for k, arr in record.items()}
    layout = json.loads(record[LAYOUT_KEY].numpy().tobytes().decode())
    if not isinstance(layout, list) or not all(isinstance(e, dict) for e in layout):
        raise MessageError("adapter layout is not a list of tensor entries")
    flat = {k.removeprefix(PACKED_PREFIX): arr.numpy() for k, arr in record.items() if k.startswith(PACKED_PREFIX)}
    offsets = dict.fromkeys(flat, 0)
    state: AdapterState = {}
    for entry in layout:
        dt, shape = str(entry["dtype"]), tuple(entry["shape"])
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise MessageError(f"adapter layout: bad shape {list(shape)} for {entry['name']!r}")
        n = 1
        for d in shape:
            n *= d
        if dt not in flat or offsets[dt] + n > flat[dt].size:
            raise MessageError(f"packed adapter is shorter than its layout says ({entry['name']})")
        state[entry["name"]] = torch.from_numpy(flat[dt][offsets[dt]: offsets[dt] + n].reshape(shape).copy())
        offsets[dt] += n
    if any(offsets[dt] != flat[dt].size for dt in flat):
        raise MessageError("packed adapter is longer than its layout says")
    return state


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of the tensors in a record (what Flower moves, headers excluded)."""
    return sum(len(arr.data) for k, arr in record.items() if k != LAYOUT_KEY)


def shard_fingerprint(input_ids: Sequence[Sequence[int]], labels: Sequence[int] | None = None) -> str:
    """SHA-256 of a tokenised shard (and its labels): equal on server and node iff both hold the same data."""
    h = hashlib.sha256()
    for ids in input_ids:
        h.update(json.dumps(list(ids), separators=(",", ":")).encode())
        h.update(b"\n")
    if labels is not None:
        h.update(json.dumps([int(x) for x in labels], separators=(",", ":")).encode())
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
        raise MessageError(f"a train message needs '{JOB_KEY}' and '{ADAPTER_KEY}' records, got {sorted(content)}")
    return dict(content[JOB_KEY])


def reply_content(update: Update, timings: dict[str, float] | None = None, masked: ArrayRecord | None = None) -> RecordDict:
    """The ``RecordDict`` a node sends back after training: the delta, or under secure aggregation only the
    ``masked`` words in its place (:mod:`fedintel.engines.flower.secagg`)."""
    result = {
        "num-samples": int(update.num_samples),
        "train-loss": float(update.train_loss),
        "steps": int(update.steps),
        "tokens": int(update.tokens),
        "flops": float(update.flops),
        "base-version": int(update.base_version),
    }
    if getattr(update, "wire_bytes", None) is not None:
        result["wire-bytes"] = int(update.wire_bytes)
    result.update({k: float(v) for k, v in (timings or {}).items()})
    return RecordDict(
        {
            **({MASKED_KEY: masked} if masked is not None else {DELTA_KEY: state_to_record(update.delta)}),
            RESULT_KEY: MetricRecord(result),
            OUTCOME_KEY: ConfigRecord({"status": "ok", "client-id": int(update.client_id)}),
        }
    )


def diverged_content(client_id: int, reason: str) -> RecordDict:
    """The reply of a node whose training loss became NaN/Inf."""
    return RecordDict({OUTCOME_KEY: ConfigRecord({"status": "diverged", "client-id": int(client_id), "reason": reason})})


STATUSES = ("ok", "diverged")


def outcome(reply: Message) -> tuple[str, str]:
    """``(status, reason)`` of a reply without an error: ``ok`` or ``diverged``; else :class:`MessageError`."""
    rec = reply.content.get(OUTCOME_KEY)
    if not isinstance(rec, ConfigRecord):
        raise MessageError(f"reply has no '{OUTCOME_KEY}' config record (records: {sorted(reply.content)})")
    status = rec.get("status")
    if status not in STATUSES:
        raise MessageError(f"reply status {status!r} is not one of {list(STATUSES)}")
    return str(status), str(rec.get("reason", ""))[:1000]


def _number(res: Any, key: str, *, integer: bool = False, what: str = "training") -> float:
    """``res[key]`` as a finite number (an integer if ``integer``), else :class:`MessageError`."""

    if key not in res:
        raise MessageError(f"{what} reply's '{RESULT_KEY}' lacks {key!r}")
    v = res[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise MessageError(f"{what} reply's {key!r} is {v!r}, expected a finite number")
    if integer and v != int(v):
        raise MessageError(f"{what} reply's {key!r} is {v!r}, expected an integer")
    return v


def update_from_reply(reply: Message, client_id: int) -> Update:
    """The :class:`~fedintel.types.Update` carried by a successful training reply."""

    content = reply.content
    if MASKED_KEY in content and DELTA_KEY not in content and RESULT_KEY in content:
        delta = _masked_delta(content[MASKED_KEY])
    elif DELTA_KEY not in content or RESULT_KEY not in content:
        raise MessageError(f"training reply lacks '{DELTA_KEY}'/'{RESULT_KEY}' (records: {sorted(content)})")
    else:
        delta = record_to_state(content[DELTA_KEY])
    if not isinstance(content[RESULT_KEY], MetricRecord):
        raise MessageError(f"training reply's '{RESULT_KEY}' is a {type(content[RESULT_KEY]).__name__}, expected a MetricRecord")
    res = dict(content[RESULT_KEY])
    got = _number(dict(content[OUTCOME_KEY]), "client-id", integer=True) if OUTCOME_KEY in content else client_id
    if got != client_id:
        raise MessageError(f"reply for client {got} arrived for a job of client {client_id}")
    timings = {k.replace("-", "_"): float(_number(res, k)) for k in res if k.startswith("node-")}
    extra = {"wire_bytes": int(_number(res, "wire-bytes", integer=True))} if "wire-bytes" in res else {}
    # value bounds (non-negative, plausible for the client's shard) are the server's screening, not the decoder's
    return Update(
        client_id=client_id,
        delta=delta,
        num_samples=int(_number(res, "num-samples", integer=True)),
        base_version=int(_number(res, "base-version", integer=True)),
        train_loss=float(_number(res, "train-loss")),
        steps=int(_number(res, "steps", integer=True)),
        tokens=int(_number(res, "tokens", integer=True)),
        flops=float(_number(res, "flops")),
        metrics=timings,
        **extra,
    )


def _masked_delta(record: Any) -> AdapterState:
    """A masked upload as an :class:`~fedintel.types.Update` delta: ``{types.MASKED_KEY: int64 words}``."""
    import numpy as np
    import torch

    from fedintel.types import MASKED_KEY as UPDATE_MASKED_KEY

    if not isinstance(record, ArrayRecord) or list(record) != ["words"]:
        raise MessageError("a masked upload must be an ArrayRecord holding only 'words'")
    try:
        words = record["words"].numpy()
    except (ValueError, TypeError) as err:
        raise MessageError(f"masked words do not decode ({err})") from None
    if words.dtype != np.uint64 or words.ndim != 1:
        raise MessageError(f"masked words are {words.dtype} of shape {words.shape}, expected a uint64 vector")
    return {UPDATE_MASKED_KEY: torch.from_numpy(words.view(np.int64).copy())}


def eval_job_content(job: EvalJob, experiment_json: str, fingerprint: str) -> RecordDict:
    """The ``RecordDict`` of an evaluation job; ``fingerprint`` is that of the client's ``job.split`` rows."""
    content = RecordDict({f"{EVAL_ADAPTER_PREFIX}{i}": state_to_record(s) for i, s in enumerate(job.states)})
    content[JOB_KEY] = ConfigRecord(
        {
            "client-id": int(job.client_id),
            "round": int(job.round_idx),
            "split": str(job.split),
            "measure": str(job.measure),
            "adapters": len(job.states),
            "experiment": experiment_json,
            "shard-sha256": fingerprint,
        }
    )
    return content


def read_eval_job(content: RecordDict) -> tuple[dict[str, Any], list[AdapterState]]:
    """The job fields and the adapters of an evaluation message."""
    if JOB_KEY not in content:
        raise MessageError(f"an evaluate message needs a '{JOB_KEY}' record, got {sorted(content)}")
    job = dict(content[JOB_KEY])
    n = int(job.get("adapters", -1))
    keys = [f"{EVAL_ADAPTER_PREFIX}{i}" for i in range(n)]
    if n < 1 or any(k not in content for k in keys):
        raise MessageError(f"an evaluate message for {n} adapters must hold {keys}, got {sorted(content)}")
    if job.get("split") not in ("train", "eval") or job.get("measure") not in EVAL_METRICS:
        raise MessageError(f"evaluate job: split {job.get('split')!r} / measure {job.get('measure')!r} unknown")
    return job, [record_to_state(content[k]) for k in keys]


def eval_reply_content(result: EvalResult) -> RecordDict:
    """The ``RecordDict`` a node sends back after an evaluation: one ``MetricRecord`` per adapter."""
    content = RecordDict({f"{EVAL_METRICS_PREFIX}{i}": MetricRecord({k: float(v) for k, v in met.items()})
                          for i, met in enumerate(result.metrics)})
    content[OUTCOME_KEY] = ConfigRecord({"status": "ok", "client-id": int(result.client_id)})
    return content


def eval_result_from_reply(reply: Message, job: EvalJob) -> EvalResult:
    """The :class:`~fedintel.types.EvalResult` of a successful evaluation reply to ``job``.

    One record per adapter of the job, holding only the names its measure produces, each a finite number
    >= 0 (an accuracy at most 1), with ``loss`` present unless the split was empty; else :class:`MessageError`.
    """
    content = reply.content
    status, _ = outcome(reply)
    if status != "ok":
        raise MessageError(f"evaluation reply status {status!r}, expected 'ok'")
    got = _number(dict(content[OUTCOME_KEY]), "client-id", integer=True, what="evaluation")
    if got != job.client_id:
        raise MessageError(f"evaluation reply for client {got} arrived for a job of client {job.client_id}")
    allowed = EVAL_METRICS[job.measure]
    metrics = []
    for i in range(len(job.states)):
        rec = content.get(f"{EVAL_METRICS_PREFIX}{i}")
        if not isinstance(rec, MetricRecord):
            raise MessageError(f"evaluation reply lacks a '{EVAL_METRICS_PREFIX}{i}' metric record "
                               f"(records: {sorted(content)})")
        res = dict(rec)
        extra = sorted(set(res) - set(allowed))
        if extra:
            raise MessageError(f"evaluation reply holds {extra}; a {job.measure} evaluation gives only {list(allowed)}")
        if res and "loss" not in res:
            raise MessageError(f"evaluation reply's '{EVAL_METRICS_PREFIX}{i}' lacks 'loss'")
        met = {k: float(_number(res, k, what="evaluation")) for k in res}
        if any(v < 0 for v in met.values()) or met.get("accuracy", 0.0) > 1:
            raise MessageError(f"evaluation reply's values {met} are out of range")
        metrics.append(met)
    if f"{EVAL_METRICS_PREFIX}{len(job.states)}" in content:
        raise MessageError(f"evaluation reply holds more records than the job's {len(job.states)} adapters")
    return EvalResult(job.client_id, metrics)


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
        raise MessageError(f"discovery reply has no '{HOSTS_KEY}' record")
    ids = [int(c) for c in rec["client-ids"] if int(c) >= 0]
    return ids, str(rec["partition-key"]), str(rec.get("error", ""))
