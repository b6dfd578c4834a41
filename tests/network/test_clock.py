"""The event queue orders by time then push order; the clock never goes back."""

import math

import pytest

from fedintel.network.clock import (
    AGGREGATION_DONE,
    COMPUTE_DONE,
    UPLOAD_DONE,
    EventQueue,
    SimClock,
)


def test_events_come_out_in_time_order():
    q = EventQueue()
    q.push(5.0, UPLOAD_DONE, 1)
    q.push(1.5, COMPUTE_DONE, 1)
    q.push(9.0, AGGREGATION_DONE)
    q.push(0.5, COMPUTE_DONE, 2)
    assert len(q) == 4
    assert q.peek().time_s == 0.5
    assert [(e.time_s, e.kind, e.payload) for e in (q.pop() for _ in range(4))] == [
        (0.5, COMPUTE_DONE, 2),
        (1.5, COMPUTE_DONE, 1),
        (5.0, UPLOAD_DONE, 1),
        (9.0, AGGREGATION_DONE, None),
    ]
    assert not q and q.peek() is None
    with pytest.raises(IndexError, match="empty"):
        q.pop()


def test_ties_are_broken_by_push_order():
    q = EventQueue()
    for i in range(10):
        q.push(3.0, UPLOAD_DONE, {"client": 9 - i})  # payload dicts are never compared
    assert [q.pop().payload["client"] for _ in range(10)] == list(range(9, -1, -1))


def test_remove_if_and_bad_times():
    q = EventQueue()
    for t, c in [(1.0, 0), (2.0, 1), (3.0, 0)]:
        q.push(t, UPLOAD_DONE, c)
    gone = q.remove_if(lambda e: e.payload == 0)
    assert [e.time_s for e in gone] == [1.0, 3.0]
    assert len(q) == 1 and q.pop().payload == 1
    with pytest.raises(ValueError, match="finite"):
        q.push(math.inf, UPLOAD_DONE)
    with pytest.raises(ValueError, match="finite"):
        q.push(math.nan, UPLOAD_DONE)


def test_clock_only_moves_forward():
    clock = SimClock()
    assert clock.now_s == 0.0
    clock.advance_to(2.5)
    clock.advance_by(0.5)
    assert clock.now_s == 3.0
    clock.advance_to(3.0)  # standing still is fine
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance_to(2.0)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance_by(-1.0)
    with pytest.raises(ValueError):
        SimClock(-1.0)


def test_async_clients_report_in_finish_order():
    from fedintel.network.config import NetworkConfig
    from fedintel.network.simulator import ClientJob, WirelessNetwork

    net = WirelessNetwork(NetworkConfig(), 4, seed=0)
    q, clock = EventQueue(), SimClock()
    for c, start in enumerate([0.0, 1.0, 2.0, 0.5]):
        t = net.client_timing(0, start, ClientJob(c, 1e11 * (4 - c), 1_000_000, 1_000_000), 5e6)
        q.push(t.finish_s, UPLOAD_DONE, c)
    finishes = []
    while q:
        e = q.pop()
        clock.advance_to(e.time_s)
        finishes.append(e.time_s)
    assert finishes == sorted(finishes) and clock.now_s == finishes[-1]
