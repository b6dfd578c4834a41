"""Frames over mutual TLS between real sockets: what is refused (other CA, no certificate, plaintext, wrong
name, tampered or replayed records, oversized frames, silent peers) and plaintext only on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time

import pytest
import torch

from fedintel.inference.config import InferConfigError, load_infer_config
from fedintel.inference.protocol import (
    Channel,
    Client,
    FrameServer,
    FrameTooLarge,
    HandshakeError,
    IntegrityError,
    LinkSecurity,
    Message,
    PeerClosed,
    PeerTimeout,
    ProtocolError,
    RemoteError,
    ReplayError,
    parse_address,
)
from fedintel.inference.worker import main as worker_main
from tests.inference.mitm import Mitm


@pytest.fixture(scope="module")
def device(links):
    """A device of the same CA as ``links``."""
    return links.device("device0")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """A device whose certificate comes from another CA."""
    return LinkSecurity.fresh(tmp_path_factory.mktemp("other-ca"), "device0")


def channel_pair(client_sec: LinkSecurity, server_sec: LinkSecurity, max_frame_bytes: int = 1 << 20,
                 timeout: float = 2.0, server_name: str = "device0") -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    out: dict[str, object] = {}

    def serve() -> None:
        try:
            out["s"] = Channel.server(b, server_sec, "server-side", timeout, max_frame_bytes)
        except ProtocolError as err:
            out["err"] = err

    t = threading.Thread(target=serve)
    t.start()
    try:
        client = Channel.client_on(a, client_sec, "client-side", timeout, max_frame_bytes, server_name=server_name)
    finally:
        t.join(5)
    if "err" in out:
        raise out["err"]  # type: ignore[misc]
    return client, out["s"]  # type: ignore[return-value]


class Recorder:
    """A handler that records the ops it saw and answers with their count."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, m: Message) -> Message:
        self.calls.append(m.op)
        return Message("ok", {"n": len(self.calls)}, m.tensors)


@pytest.fixture
def server(device):
    rec = Recorder()
    srv = FrameServer(rec, device, timeout=2.0)
    srv.start()
    yield srv, rec
    srv.stop()


def wait_for(cond, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_tensors_round_trip_bit_exact_over_mutual_tls(links, device):
    c, s = channel_pair(links, device)
    assert c.encrypted and s.encrypted
    assert c.sock.version() == "TLSv1.3"
    assert (c.peer_name, s.peer_name) == ("device0", "origin")  # each side verified the other's certificate
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


def test_a_frame_sent_twice_on_one_connection_is_a_replay(links, device):
    c, s = channel_pair(links, device)
    frame = c.encode(Message("forward", {"n": 1}))
    c.send_bytes(frame)
    assert s.recv().meta == {"n": 1}
    c.send_bytes(frame)
    with pytest.raises(ReplayError, match="replayed frame"):
        s.recv()


def test_prompts_are_not_in_clear_on_the_wire(links, server):
    srv, rec = server
    mitm = Mitm((srv.host, srv.port))
    try:
        c = Client(mitm.address, links, timeout=2.0, server_name="device0")
        c.request("ping")
        mitm.arm("record")
        secret = "the patient's diagnosis is confidential"
        assert c.request("generate", {"prompt": secret}).op == "ok"
        assert mitm.done.wait(2) and len(mitm.recorded) > len(secret)
        assert secret.encode() not in mitm.recorded and b"generate" not in mitm.recorded
        c.close()
    finally:
        mitm.close()
    assert rec.calls == ["ping", "generate"]


def test_tampered_record_is_refused_and_never_reaches_the_handler(links, server):
    srv, rec = server
    mitm = Mitm((srv.host, srv.port))
    try:
        c = Client(mitm.address, links, timeout=2.0, server_name="device0")
        assert c.request("ping").meta == {"n": 1}
        mitm.arm("flip")
        with pytest.raises((IntegrityError, PeerClosed)):
            c.request("forward", {}, {"h": torch.ones(16)})
        assert mitm.done.is_set()
        c.close()
    finally:
        mitm.close()
    assert wait_for(lambda: srv.rejected == 1)
    assert rec.calls == ["ping"]


@pytest.mark.parametrize("where", ["same", "other"])
def test_record_replayed_or_injected_from_another_connection_is_refused(links, server, where):
    srv, rec = server
    mitm = Mitm((srv.host, srv.port))
    try:
        c1 = Client(mitm.address, links, timeout=2.0, server_name="device0")
        c1.request("ping")
        mitm.arm("record")
        c1.request("transfer", {"amount": 100})
        assert mitm.done.wait(2)
        c2 = c1 if where == "same" else Client(mitm.address, links, timeout=2.0, server_name="device0")
        if c2 is not c1:
            c2.request("ping")
        mitm.arm("inject", mitm.recorded)  # the recorded ciphertext instead of c2's next request
        with pytest.raises((IntegrityError, PeerClosed)):
            c2.request("harmless")
        c1.close()
        c2.close()
    finally:
        mitm.close()
    assert wait_for(lambda: srv.rejected == 1)
    assert rec.calls.count("transfer") == 1 and "harmless" not in rec.calls


def test_peer_with_a_certificate_of_another_ca_is_refused_both_ways(links, stranger, server, tmp_path, caplog):
    srv, rec = server
    # a client that trusts our CA but holds a certificate of another CA: our server refuses it
    for f in ("device0.crt", "device0.key"):
        shutil.copy(stranger.cert_dir / f, tmp_path / f)
    shutil.copy(links.cert_dir / "ca.crt", tmp_path / "ca.crt")
    forged = LinkSecurity.tls(tmp_path, "device0", issue=False)
    with pytest.raises(HandshakeError, match="refused our certificate"):
        Client(srv.address, forged, timeout=2.0, server_name="device0").request("ping")
    assert wait_for(lambda: srv.rejected == 1)
    assert "its certificate was refused (unable to get local issuer certificate" in caplog.text
    assert rec.calls == []
    # a server of another CA: we refuse it
    with pytest.raises(HandshakeError, match="its certificate was refused .*self-signed certificate in certificate chain"):
        channel_pair(links, stranger)


def test_client_without_a_certificate_is_refused(links, server):
    srv, rec = server
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(links.cert_dir / "ca.crt"))  # trusts the server, has no certificate of its own
    frame = b"FEDI" + bytes([2]) + b"\0" * 12
    with socket.create_connection((srv.host, srv.port), timeout=2) as raw, \
            ctx.wrap_socket(raw, server_hostname="device0") as s:
        got = b""
        with pytest.raises((ssl.SSLError, ConnectionError)) as err:
            s.sendall(frame)
            got = s.recv(100)  # TLS 1.3: the refusal arrives as an alert at the first read
            raise ConnectionError(f"read {got!r}")
    assert "certificate required" in str(err.value) or got == b""
    assert wait_for(lambda: srv.rejected == 1)
    assert rec.calls == []


def test_plaintext_client_against_a_tls_server_is_refused_and_vice_versa(links, server):
    srv, rec = server
    with pytest.raises((PeerClosed, ProtocolError)):
        Client(srv.address, LinkSecurity.plaintext(), timeout=2.0).request("ping")
    assert wait_for(lambda: srv.rejected == 1)
    assert rec.calls == []
    plain = FrameServer(Recorder(), LinkSecurity.plaintext(), timeout=2.0)
    plain.start()
    try:
        with pytest.raises(HandshakeError):
            Client(plain.address, links, timeout=2.0).request("ping")
        assert plain.handler.calls == []  # type: ignore[attr-defined]
    finally:
        plain.stop()


def test_client_checks_the_device_name(links, server):
    srv, rec = server
    assert Client(srv.address, links, timeout=2.0, server_name="device0").request("a").op == "ok"
    assert Client(srv.address, links, timeout=2.0).request("b").op == "ok"  # the address's host, 127.0.0.1
    with pytest.raises(HandshakeError, match="not valid for 'stage9'"):
        Client(srv.address, links, timeout=2.0, server_name="stage9").request("c")
    assert rec.calls == ["a", "b"]


def test_oversized_frame_is_refused_before_reading(links, device):
    c, s = channel_pair(links, device, max_frame_bytes=4096)
    with pytest.raises(FrameTooLarge):
        c.send(Message("forward", {}, {"h": torch.zeros(2048)}))
    c.max_frame_bytes = 1 << 20  # a sender that ignores the limit
    c.send(Message("forward", {}, {"h": torch.zeros(2048)}))
    with pytest.raises(FrameTooLarge, match="exceeds max_frame_bytes=4096"):
        s.recv()


def test_oversized_frame_to_a_server_gets_the_reason(links, server, device):
    srv, rec = server
    srv.max_frame_bytes = 1 << 16
    c = Client(srv.address, links, timeout=5.0, max_frame_bytes=1 << 24)
    with pytest.raises(RemoteError, match="exceeds max_frame_bytes=65536"):
        c.request("forward", {}, {"h": torch.zeros(1 << 20)})
    c.close()
    assert rec.calls == []


def test_garbage_and_malformed_descriptors(links, device):
    c, s = channel_pair(links, device)
    c.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="bad magic"):
        s.recv()
    c, s = channel_pair(links, device)
    msg = Message("x", {}, {"h": torch.ones(4)})
    c.send(msg)
    s.recv()
    # a frame whose descriptor lies about the payload size
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


def test_silent_peers_time_out_in_the_handshake_and_after(links, device, server):
    c, _s = channel_pair(links, device, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout):
        c.recv()
    assert time.monotonic() - t0 < 2
    # a TCP listener that never answers the TLS handshake
    mute = socket.create_server(("127.0.0.1", 0))
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerTimeout, match="handshake"):
            Channel.client(f"127.0.0.1:{mute.getsockname()[1]}", links, timeout=0.3, connect_timeout=0.3)
        assert time.monotonic() - t0 < 3
    finally:
        mute.close()
    # a client that connects and never starts the handshake is dropped after the server's timeout (2 s)
    srv, rec = server
    with socket.create_connection((srv.host, srv.port)):
        assert wait_for(lambda: srv.rejected == 1, seconds=6)
    assert rec.calls == []


def test_server_refuses_a_replay_and_reports_handler_errors(links, server):
    srv, rec = server
    client = Client(srv.address, links, timeout=2.0)
    assert client.request("a").meta == {"n": 1}
    ch = client.channel()
    frame = ch.encode(Message("c"))
    ch.send_bytes(frame)
    assert ch.recv().meta == {"n": 2}
    ch.send_bytes(frame)
    err = ch.recv()
    assert err.meta["kind"] == "ReplayError" and "replayed" in err.meta["error"]
    assert rec.calls == ["a", "c"]
    with pytest.raises((PeerClosed, ProtocolError)):
        ch.send(Message("d"))
        ch.recv()
    client.close()
    # handler errors come back as RemoteError and the connection stays usable
    srv.handler = lambda m: (_ for _ in ()).throw(ValueError("bad input"))
    with pytest.raises(RemoteError, match="bad input"):
        client.request("e")
    with pytest.raises(RemoteError, match="bad input"):
        client.request("f")
    client.close()


def test_plaintext_only_on_loopback(tmp_path, capsys):
    plain = LinkSecurity.plaintext()
    with pytest.raises(ValueError, match="not a loopback address"):
        FrameServer(Recorder(), plain, host="0.0.0.0")
    with pytest.raises(ValueError, match="not a loopback address"):
        Client("10.1.2.3:7000", plain)
    srv = FrameServer(Recorder(), plain, timeout=2.0)  # on loopback it works, in clear
    srv.start()
    try:
        c = Client(srv.address, plain, timeout=2.0)
        assert c.request("ping").meta == {"n": 1} and not c.channel().encrypted
        c.close()
    finally:
        srv.stop()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("insecure: true\nstages: ['10.1.2.3:7000']\n")
    with pytest.raises(InferConfigError, match="plaintext links are for loopback only, but stages.0 is 10.1.2.3:7000"):
        load_infer_config(cfg)
    cfg.write_text("key: 000102030405060708090a0b0c0d0e0f\n")
    with pytest.raises(InferConfigError, match="key: the shared HMAC key is gone"):
        load_infer_config(cfg)
    assert worker_main(["--insecure", "--host", "0.0.0.0"]) == 2
    ready = json.loads(capsys.readouterr().out.splitlines()[0])
    assert not ready["ready"] and "not a loopback address" in ready["error"]
    assert worker_main(["--host", "127.0.0.1"]) == 2  # neither certificates nor --insecure
    assert "pass --certs DIR and --name NAME" in json.loads(capsys.readouterr().out)["error"]


def test_unknown_address_fails_fast(links):
    with pytest.raises(ValueError, match="not host:port"):
        parse_address("localhost")
    with pytest.raises(ValueError, match="out of range"):
        parse_address("127.0.0.1:70000")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(PeerClosed, match="cannot connect"):
        Client(f"127.0.0.1:{port}", links, connect_timeout=1.0).request("ping")
