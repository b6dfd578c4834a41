"""The reply decoder turns anything malformed into a MessageError (the engine makes it that client's failure)."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedintel.engines.flower import messages as m
from fedintel.types import Update


def _reply(content: RecordDict) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    job = Message(RecordDict(), 100, m.TRAIN)
    job.metadata.__dict__["_message_id"] = job.object_id
    return Message(content, reply_to=job)


def _good() -> RecordDict:
    delta = {"a.lora_A.weight": torch.randn(2, 4), "a.lora_B.weight": torch.randn(4, 2)}
    return m.reply_content(Update(3, delta, 8, 1, 0.5, 2, 64, flops=1e6))


def _layout(raw: bytes):
    def edit(c):
        c[m.DELTA_KEY][m.LAYOUT_KEY] = Array(np.frombuffer(raw, dtype=np.uint8).copy())
    return edit


def _set(record, key, value):
    def edit(c):
        c[record][key] = value
    return edit


def _delete(record, key=None):
    def edit(c):
        if key is None:
            del c[record]
        else:
            del c[record][key]
    return edit


def test_a_good_reply_decodes():
    u = m.update_from_reply(_reply(_good()), 3)
    assert (u.num_samples, u.base_version, u.steps, u.tokens, u.flops) == (8, 1, 2, 64, 1e6)
    assert m.outcome(_reply(_good())) == ("ok", "")


@pytest.mark.parametrize("edit", [
    _delete(m.RESULT_KEY, "num-samples"), _delete(m.RESULT_KEY, "train-loss"), _delete(m.DELTA_KEY),
    _set(m.RESULT_KEY, "steps", [1.0, 2.0]), _set(m.RESULT_KEY, "num-samples", 2.5),
    _set(m.RESULT_KEY, "flops", float("inf")), _set(m.RESULT_KEY, "train-loss", float("nan")),
    _set(m.RESULT_KEY, "wire-bytes", 1.5), _set(m.OUTCOME_KEY, "client-id", 4),
    _set(m.OUTCOME_KEY, "client-id", "three"),
    _layout(b"{not json"), _layout(b"\xff\xfe"), _layout(b'{"a": 1}'), _layout(b'[{"name": "x"}]'),
    _layout(b'[{"name": "x", "shape": ["a"], "dtype": "float32"}]'),
    _layout(b'[{"name": "x", "shape": [-1], "dtype": "float32"}]'),
    _layout(b'[{"name": "x", "shape": [1000], "dtype": "float32"}]'),
], ids=["no-samples", "no-loss", "no-delta", "list-steps", "fractional-samples", "inf-flops", "nan-loss",
        "fractional-bytes", "other-client", "text-client-id", "layout-not-json", "layout-not-utf8",
        "layout-not-list", "layout-entry-incomplete", "layout-shape-text", "layout-shape-negative",
        "layout-too-long"])
def test_malformed_training_replies_are_protocol_errors(edit):
    content = _good()
    edit(content)
    with pytest.raises(m.MessageError):
        m.update_from_reply(_reply(content), 3)


def test_wrong_record_types_are_protocol_errors():
    content = _good()
    content[m.RESULT_KEY] = ConfigRecord({"num-samples": "many"})
    with pytest.raises(m.MessageError, match="MetricRecord"):
        m.update_from_reply(_reply(content), 3)
    content = _good()
    content[m.DELTA_KEY] = MetricRecord({"x": 1.0})
    with pytest.raises(m.MessageError, match="ArrayRecord"):
        m.update_from_reply(_reply(content), 3)
    assert isinstance(_good()[m.DELTA_KEY], ArrayRecord)


@pytest.mark.parametrize("outcome", [None, {"status": "great"}, {"reason": "x"}])
def test_unknown_or_missing_outcome_is_a_protocol_error(outcome):
    content = _good()
    del content[m.OUTCOME_KEY]
    if outcome is not None:
        content[m.OUTCOME_KEY] = ConfigRecord(outcome)
    with pytest.raises(m.MessageError):
        m.outcome(_reply(content))
