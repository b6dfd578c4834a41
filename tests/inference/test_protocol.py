"""Frames, integrity tags and replay protection, over real sockets."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from fedintel.inference.protocol import (
    Channel,
    Client,
    FrameServer,
    FrameTooLarge,
    IntegrityError,
    Message,
    PeerClosed,
    PeerTimeout,
    ProtocolError,
    RemoteError,
    ReplayError,
    parse_address,
)


def channel_pair(key: bytes, server_key: bytes | None = None, max_frame_bytes: int = 1 << 20,
                 timeout: float = 2.0) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    out: dict[str, object] = {}

    def serve() -> None:
        try:
            out["s"] = Channel.server(b, server_key or key, "server-side", timeout, max_frame_bytes)
        except ProtocolError as err:
            out["err"] = err

    t = threading.Thread(target=serve)
    t.start()
    client = Channel.client_on(a, key, "client-side", timeout, max_frame_bytes)
    t.join(5)
    if "err" in out:
        raise out["err"]  # type: ignore[misc]
    return client, out["s"]  # type: ignore[return-value]


def test_tensors_round_trip_bit_exact(key):
    c, s = channel_pair(key)
    tensors = {
        "h": torch.randn(1, 3, 8),
        "ids": torch.tensor([[1, 2, 3]]),
        "bf": torch.randn(4, 2).bfloat16(),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(7.5),
        "empty": torch.zeros(0, 4),
    }
    c.send(Message("forward", {"session": "x", "pos": 3}, tensors))
    got = s.recv()
    assert got.op == "forward" and got.meta == {"session": "x", "pos": 3}
    for k, v in tensors.items():
        assert got.tensors[k].dtype == v.dtype and torch.equal(got.tensors[k], v), k


def test_tampered_frame_is_rejected(key):
    c, s = channel_pair(key)
    frame = bytearray(c.encode(Message("forward", {}, {"h": torch.ones(16)})))
    frame[-40] ^= 0x01  # a bit of the payload
    c.send_bytes(bytes(frame))
    with pytest.raises(IntegrityError, match="HMAC mismatch"):
        s.recv()


def test_replayed_frame_is_rejected(key):
    c, s = channel_pair(key)
    frame = c.encode(Message("forward", {"n": 1}))
    c.send_bytes(frame)
    assert s.recv().meta == {"n": 1}
    c.send_bytes(frame)
    with pytest.raises(ReplayError, match="replayed frame"):
        s.recv()


def test_frame_from_another_connection_is_rejected(key):
    c1, _ = channel_pair(key)
    c2, s2 = channel_pair(key)
    c2.send_bytes(c1.encode(Message("forward")))  # right key, right seq, wrong connection
    with pytest.raises(IntegrityError):
        s2.recv()


def test_reflected_frame_is_rejected(key):
    c, s = channel_pair(key)
    frame = c.encode(Message("ping"))
    s.sock.sendall(frame)  # the server echoes the client's own frame back to it
    with pytest.raises(IntegrityError):
        c.recv()


def test_wrong_key_fails_handshake(key):
    with pytest.raises(IntegrityError, match="different keys"):
        channel_pair(key, server_key=bytes(32))


def test_oversized_frame_is_refused_before_reading(key):
    c, s = channel_pair(key, max_frame_bytes=4096)
    with pytest.raises(FrameTooLarge):
        c.send(Message("forward", {}, {"h": torch.zeros(2048)}))
    c.max_frame_bytes = 1 << 20  # a sender that ignores the limit
    c.send(Message("forward", {}, {"h": torch.zeros(2048)}))
    with pytest.raises(FrameTooLarge, match="exceeds max_frame_bytes=4096"):
        s.recv()


def test_garbage_and_malformed_descriptors(key):
    c, s = channel_pair(key)
    c.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="bad magic"):
        s.recv()
    c, s = channel_pair(key)
    msg = Message("x", {}, {"h": torch.ones(4)})
    c.send(msg)
    s.recv()
    # a validly tagged frame whose descriptor lies about the payload size
    import fedintel.inference.protocol as P

    orig = P._encode_tensors

    def lying(t):
        specs, chunks, n = orig(t)
        specs[0]["shape"] = [400]
        return specs, chunks, n

    P._encode_tensors = lying
    try:
        c.send(msg)
    finally:
        P._encode_tensors = orig
    with pytest.raises(ProtocolError, match="needs 1600 bytes"):
        s.recv()


def test_silent_peer_times_out(key):
    c, _s = channel_pair(key, timeout=0.3)
    with pytest.raises(PeerTimeout):
        c.recv()


def test_server_rejects_tampering_and_replay_and_never_calls_handler(key):
    calls: list[str] = []

    def handler(m: Message) -> Message:
        calls.append(m.op)
        return Message("ok", {"n": len(calls)})

    srv = FrameServer(handler, key, timeout=2.0)
    srv.start()
    try:
        client = Client(srv.address, key, timeout=2.0)
        assert client.request("a").meta == {"n": 1}
        ch = client.channel()
        frame = bytearray(ch.encode(Message("b")))
        frame[20] ^= 0xFF
        ch.send_bytes(bytes(frame))
        err = ch.recv()
        assert err.op == "error" and err.meta["kind"] == "IntegrityError"
        assert calls == ["a"]
        client.close()
        # replay on a fresh connection of a frame the server already accepted
        ch = client.channel()
        frame = ch.encode(Message("c"))
        ch.send_bytes(frame)
        assert ch.recv().meta == {"n": 2}
        ch.send_bytes(frame)
        err = ch.recv()
        assert err.meta["kind"] == "ReplayError" and "replayed" in err.meta["error"]
        assert calls == ["a", "c"]
        with pytest.raises((PeerClosed, ProtocolError)):
            ch.send(Message("d"))
            ch.recv()
        client.close()
        # handler errors come back as RemoteError and the connection stays usable
        srv.handler = lambda m: (_ for _ in ()).throw(ValueError("bad input"))
        with pytest.raises(RemoteError, match="bad input"):
            client.request("e")
    finally:
        srv.stop()


def test_unknown_address_fails_fast(key):
    with pytest.raises(ValueError, match="not host:port"):
        parse_address("localhost")
    with pytest.raises(ValueError, match="out of range"):
        parse_address("127.0.0.1:70000")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(PeerClosed, match="cannot connect"):
        Client(f"127.0.0.1:{port}", key, connect_timeout=1.0).request("ping")
