"""The wire protocol between devices: authenticated, length-prefixed frames carrying raw tensors.

One frame on the wire::

    prefix   17 bytes  struct "!4sBIQ": magic b"FEDI", version, header length (u32), payload length (u64)
    header   JSON      {"seq": n, "op": "...", "meta": {...}, "tensors": [{name, dtype, shape, offset, nbytes}]}
    payload  raw bytes the tensors, each 64-byte aligned, little-endian (no pickle anywhere)
    tag      32 bytes  HMAC-SHA256(session key, direction || prefix || header || payload)

A connection starts with a handshake: the server sends a random nonce, the client answers with its own
nonce, both tagged with the shared key. The *session key* is ``HMAC(key, "fedintel-session" || server
nonce || client nonce)``, so a frame recorded on one connection fails the integrity check on any other,
and every frame carries a sequence number that must grow by one, so a frame replayed on the same
connection is rejected too. The direction byte stops a frame being reflected back to its sender.

Limits are checked on the prefix, before anything is read: a header over :data:`MAX_HEADER_BYTES` or a
frame over ``max_frame_bytes`` closes the connection with a :class:`FrameTooLarge` error. Every socket
operation has a timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

MAGIC = b"FEDI"
VERSION = 1
PREFIX = struct.Struct("!4sBIQ")
TAG_BYTES = 32
NONCE_BYTES = 16
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_FRAME_BYTES = 64 << 20
DEFAULT_TIMEOUT_S = 30.0
ALIGN = 64
KEY_ENV = "FEDINTEL_INFER_KEY"
SERVER_IDLE_S = 3600.0
"""A server closes a connection that sends nothing for this long (seconds)."""
RECONNECT_IDLE_S = 600.0
"""A client reconnects before using a connection idle for this long (well under SERVER_IDLE_S)."""

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class ProtocolError(RuntimeError):
    """A frame could not be sent or was rejected; the connection it came on is no longer usable."""


class IntegrityError(ProtocolError):
    """A frame's HMAC tag does not match: it was tampered with, or the peer uses another key."""


class ReplayError(ProtocolError):
    """A frame arrived with a sequence number already seen (a replay) or out of order."""


class FrameTooLarge(ProtocolError):
    """A frame announced a size over the configured limit."""


class PeerClosed(ProtocolError):
    """The peer closed the connection (or died)."""


class PeerTimeout(ProtocolError):
    """The peer did not answer within the timeout."""


class RemoteError(RuntimeError):
    """The peer received the request but answered with an error; ``kind`` names the error class."""

    def __init__(self, message: str, kind: str = "RemoteError", address: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.address = address


@dataclass
class Message:
    """One request or reply: an operation name, JSON-able metadata and named tensors."""

    op: str
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def parse_key(key: str | bytes | None) -> bytes:
    """The shared HMAC key as bytes: ``bytes`` as is, ``str`` as hex (or as UTF-8 when not hex).

    ``None`` reads the ``FEDINTEL_INFER_KEY`` environment variable. A key shorter than 16 bytes is refused.
    """
    if key is None:
        key = os.environ.get(KEY_ENV)
        if not key:
            raise ValueError(f"no shared key: pass one or set the {KEY_ENV} environment variable (hex)")
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key)
        except ValueError:
            key = key.encode()
    if len(key) < 16:
        raise ValueError(f"the shared key must be at least 16 bytes, got {len(key)}")
    return key


def new_key() -> bytes:
    """A fresh random 32-byte key."""
    return os.urandom(32)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) to a tuple; raises ``ValueError`` naming the bad part."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"device address {address!r} is not host:port")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"device address {address!r}: port {port!r} is not a number") from None
    if not 0 < p < 65536:
        raise ValueError(f"device address {address!r}: port {p} out of range 1-65535")
    return host, p


def _encode_tensors(tensors: dict[str, torch.Tensor]) -> tuple[list[dict[str, Any]], list[Any], int]:
    specs: list[dict[str, Any]] = []
    chunks: list[Any] = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise ProtocolError(f"tensor {name!r}: dtype {t.dtype} cannot be sent")
        t = t.detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b""  # no copy
        pad = (-offset) % ALIGN
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        specs.append(
            {"name": name, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "offset": offset,
             "nbytes": len(raw)}
        )
        chunks.append(raw)
        offset += len(raw)
    return specs, chunks, offset


def _decode_tensors(specs: Any, payload: bytearray) -> dict[str, torch.Tensor]:
    if not isinstance(specs, list):
        raise ProtocolError("malformed header: 'tensors' must be a list")
    out: dict[str, torch.Tensor] = {}
    for s in specs:
        try:
            name, dtype_name, shape = s["name"], s["dtype"], [int(d) for d in s["shape"]]
            offset, nbytes = int(s["offset"]), int(s["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"malformed tensor descriptor {s!r}") from None
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise ProtocolError(f"tensor {name!r}: unknown dtype {dtype_name!r}")
        if any(d < 0 for d in shape):
            raise ProtocolError(f"tensor {name!r}: negative dimension in shape {shape}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel = math.prod(shape)
        if numel * itemsize != nbytes or offset < 0 or offset + nbytes > len(payload):
            raise ProtocolError(
                f"tensor {name!r}: shape {shape} x {dtype_name} needs {numel * itemsize} bytes, descriptor says "
                f"{nbytes} at offset {offset} of a {len(payload)}-byte payload"
            )
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(payload, dtype=dtype, count=numel, offset=offset).reshape(shape)
    return out


class Channel:
    """One authenticated connection: frames out with a growing sequence number, frames in checked.

    Build it with :meth:`client` or :meth:`server`, which run the handshake. Not thread-safe: one
    request/reply at a time (callers hold a lock).
    """

    def __init__(
        self, sock: socket.socket, session_key: bytes, is_client: bool, peer: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self._key = session_key
        self._out_dir = b"C" if is_client else b"S"
        self._in_dir = b"S" if is_client else b"C"
        self.max_frame_bytes = max_frame_bytes
        self.timeout = timeout
        self.send_seq = 0
        self.recv_seq = 0
        self.closed = False
        self.broken = False
        self.bytes_sent = 0
        self.bytes_received = 0

    # ---------------------------------------------------------------- handshake
    @classmethod
    def client(
        cls, address: str, key: bytes, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> Channel:
        """Connect to ``address`` and authenticate with ``key``."""
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except TimeoutError:
            raise PeerTimeout(f"connecting to {address} timed out after {connect_timeout:g} s") from None
        except OSError as err:
            raise PeerClosed(f"cannot connect to device at {address}: {err.strerror or err}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return cls.client_on(sock, key, address, timeout, max_frame_bytes, connect_timeout + timeout)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def client_on(
        cls, sock: socket.socket, key: bytes, peer: str, timeout: float = DEFAULT_TIMEOUT_S,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, handshake_timeout: float | None = None,
    ) -> Channel:
        """Run the client side of the handshake on a connected socket."""
        sock.settimeout(timeout)
        server_nonce = _recv_hello(sock, key, b"S", b"", peer, handshake_timeout or timeout)
        client_nonce = os.urandom(NONCE_BYTES)
        _send_hello(sock, key, b"C", server_nonce + client_nonce)
        return cls(sock, _session_key(key, server_nonce, client_nonce), True, peer, max_frame_bytes, timeout)

    @classmethod
    def server(
        cls, sock: socket.socket, key: bytes, peer: str, timeout: float = DEFAULT_TIMEOUT_S,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> Channel:
        """Authenticate an accepted connection."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        server_nonce = os.urandom(NONCE_BYTES)
        _send_hello(sock, key, b"S", server_nonce)
        both = _recv_hello(sock, key, b"C", server_nonce, peer, timeout)
        client_nonce = both[NONCE_BYTES:]
        return cls(sock, _session_key(key, server_nonce, client_nonce), False, peer, max_frame_bytes, timeout)

    # ---------------------------------------------------------------- frames
    def encode(self, msg: Message) -> bytes:
        """The frame for ``msg`` with the next sequence number (consumes it)."""
        self.send_seq += 1
        specs, chunks, payload_len = _encode_tensors(msg.tensors)
        header = json.dumps(
            {"seq": self.send_seq, "op": msg.op, "meta": msg.meta, "tensors": specs,
             "byteorder": sys.byteorder},
            separators=(",", ":"),
        ).encode()
        if len(header) > MAX_HEADER_BYTES:
            raise FrameTooLarge(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
        total = len(header) + payload_len
        if total > self.max_frame_bytes:
            raise FrameTooLarge(
                f"frame of {total} bytes exceeds max_frame_bytes={self.max_frame_bytes} (to {self.peer})"
            )
        prefix = PREFIX.pack(MAGIC, VERSION, len(header), payload_len)
        mac = hmac.new(self._key, self._out_dir, hashlib.sha256)
        mac.update(prefix)
        mac.update(header)
        for c in chunks:
            mac.update(c)
        return b"".join([prefix, header, *chunks, mac.digest()])

    def send_bytes(self, data: bytes) -> None:
        """Send an already encoded frame."""
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.close()
            raise PeerTimeout(f"sending to {self.peer} timed out after {self.timeout:g} s") from None
        except OSError as err:
            self.broken = True
            raise PeerClosed(f"connection to {self.peer} lost while sending: {err}") from None
        self.bytes_sent += len(data)

    def send(self, msg: Message) -> None:
        """Encode and send ``msg``."""
        self.send_bytes(self.encode(msg))

    def recv(self, timeout: float | None = None, idle_timeout: float | None = None) -> Message:
        """Receive, check and decode one frame.

        ``idle_timeout`` bounds the wait for the first byte (a server waiting for the next request);
        ``timeout`` (default: the channel's) bounds the rest. Raises :class:`ProtocolError` subclasses.
        """
        timeout = self.timeout if timeout is None else timeout
        try:
            prefix = self._recv_exact(PREFIX.size, idle_timeout if idle_timeout is not None else timeout, timeout)
            magic, version, header_len, payload_len = PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise ProtocolError(f"not a fedintel frame from {self.peer} (bad magic {magic!r})")
            if version != VERSION:
                raise ProtocolError(f"frame from {self.peer} has protocol version {version}, expected {VERSION}")
            if header_len > MAX_HEADER_BYTES:
                raise FrameTooLarge(f"frame header of {header_len} bytes from {self.peer} exceeds {MAX_HEADER_BYTES}")
            if header_len + payload_len > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"frame of {header_len + payload_len} bytes from {self.peer} exceeds "
                    f"max_frame_bytes={self.max_frame_bytes}"
                )
            header = self._recv_exact(header_len, timeout, timeout)
            payload = bytearray(payload_len)
            if payload_len:
                self._recv_into(payload, timeout)
            tag = self._recv_exact(TAG_BYTES, timeout, timeout)
        except ProtocolError:
            self.broken = True
            raise
        mac = hmac.new(self._key, self._in_dir, hashlib.sha256)
        mac.update(prefix)
        mac.update(header)
        mac.update(payload)
        if not hmac.compare_digest(mac.digest(), tag):
            self.broken = True
            raise IntegrityError(
                f"integrity check failed on a frame from {self.peer}: HMAC mismatch (tampered, "
                "corrupted, recorded on another connection, or the peer uses a different key); frame dropped"
            )
        try:
            head = json.loads(header)
            seq = int(head["seq"])
            op = str(head["op"])
            meta = head.get("meta") or {}
            if not isinstance(meta, dict):
                raise TypeError("meta is not an object")
        except (ValueError, KeyError, TypeError) as err:
            self.broken = True
            raise ProtocolError(f"malformed frame header from {self.peer}: {err}") from None
        if seq != self.recv_seq + 1:
            self.broken = True
            what = "replayed" if seq <= self.recv_seq else "out-of-order"
            raise ReplayError(
                f"{what} frame from {self.peer}: sequence number {seq}, expected {self.recv_seq + 1}; frame dropped"
            )
        if head.get("byteorder", "little") != sys.byteorder:
            self.broken = True
            raise ProtocolError(f"frame from {self.peer} is {head.get('byteorder')}-endian; this host is not")
        self.recv_seq = seq
        try:
            tensors = _decode_tensors(head.get("tensors", []), payload)
        except ProtocolError:
            self.broken = True
            raise
        self.bytes_received += PREFIX.size + header_len + payload_len + TAG_BYTES
        return Message(op, meta, tensors)

    def request(self, msg: Message, timeout: float | None = None) -> Message:
        """Send ``msg`` and wait for the reply; an error reply raises :class:`RemoteError`."""
        try:
            self.send(msg)
        except PeerClosed:
            # the peer may have refused the frame (too large) and said why before hanging up
            reply = self._pending_error()
            if reply is None:
                raise
        else:
            reply = self.recv(timeout=timeout)
        if reply.op == "error":
            if reply.meta.get("_close"):
                self.broken = True
            raise RemoteError(
                f"{self.peer}: {reply.meta.get('error', 'unknown error')}",
                str(reply.meta.get("kind", "RemoteError")), self.peer,
            )
        return reply

    def _pending_error(self) -> Message | None:
        if self.sock.fileno() < 0:
            return None
        try:
            reply = self.recv(timeout=0.5)
        except ProtocolError:
            return None
        finally:
            self.close()
        return reply if reply.op == "error" else None

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    # ---------------------------------------------------------------- raw reads
    def _recv_exact(self, n: int, first_timeout: float, timeout: float) -> bytes:
        buf = bytearray(n)
        self._recv_into(buf, timeout, first_timeout)
        return bytes(buf)

    def _recv_into(self, buf: bytearray, timeout: float, first_timeout: float | None = None) -> None:
        view = memoryview(buf)
        got = 0
        n = len(buf)
        deadline = time.monotonic() + (first_timeout if first_timeout is not None else timeout)
        started = False
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout(f"no complete frame from {self.peer} within the timeout")
            self.sock.settimeout(remaining)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise PeerTimeout(
                    f"{self.peer} did not answer within {first_timeout if not started and first_timeout else timeout:g} s"
                ) from None
            except OSError as err:
                raise PeerClosed(f"connection to {self.peer} lost: {err}") from None
            if k == 0:
                raise PeerClosed(f"{self.peer} closed the connection")
            if not started:
                started = True
                deadline = time.monotonic() + timeout
            got += k


def _session_key(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(key, b"fedintel-session" + server_nonce + client_nonce, hashlib.sha256).digest()


def _send_hello(sock: socket.socket, key: bytes, direction: bytes, body: bytes) -> None:
    tag = hmac.new(key, b"fedintel-hello" + direction + body, hashlib.sha256).digest()
    try:
        sock.sendall(MAGIC + bytes([VERSION, len(body)]) + body + tag)
    except OSError as err:
        raise PeerClosed(f"handshake failed while sending: {err}") from None


def _recv_hello(sock: socket.socket, key: bytes, direction: bytes, expect_prefix: bytes, peer: str,
                timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        head = _read_n(sock, 6)
        if head[:4] != MAGIC:
            raise ProtocolError(f"{peer} is not a fedintel device (bad handshake magic {head[:4]!r})")
        if head[4] != VERSION:
            raise ProtocolError(f"{peer} speaks protocol version {head[4]}, expected {VERSION}")
        body = _read_n(sock, head[5])
        tag = _read_n(sock, TAG_BYTES)
    except TimeoutError:
        raise PeerTimeout(f"handshake with {peer} timed out after {timeout:g} s") from None
    except OSError as err:
        raise PeerClosed(f"handshake with {peer} failed: {err}") from None
    want = hmac.new(key, b"fedintel-hello" + direction + body, hashlib.sha256).digest()
    if not hmac.compare_digest(want, tag):
        raise IntegrityError(f"handshake with {peer} failed: HMAC mismatch (the devices use different keys?)")
    if len(body) != len(expect_prefix) + NONCE_BYTES or not body.startswith(expect_prefix):
        raise ReplayError(f"handshake with {peer} failed: stale or replayed nonce")
    return body


def _read_n(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def _drain(sock: socket.socket, seconds: float, limit: int = 1 << 28) -> None:
    """Read and discard what the peer is still sending, for at most ``seconds`` and ``limit`` bytes."""
    sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + seconds
    got = 0
    buf = bytearray(1 << 16)
    while got < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sock.settimeout(remaining)
        try:
            k = sock.recv_into(buf)
        except OSError:
            return
        if not k:
            return
        got += k


Handler = Callable[[Message], Message]


class FrameServer:
    """A threaded TCP server: one thread per connection, each frame passed to ``handler``.

    A handler exception becomes an ``error`` reply naming the exception; a frame that fails the
    integrity, replay or size check gets an ``error`` reply (when the stream is still in sync) and the
    connection is closed; the handler never sees it.
    """

    def __init__(
        self, handler: Handler, key: bytes, host: str = "127.0.0.1", port: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, timeout: float = DEFAULT_TIMEOUT_S,
        idle_timeout: float = SERVER_IDLE_S, max_connections: int = 256,
    ) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.key = key
        self.max_frame_bytes = max_frame_bytes
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self.stopping = threading.Event()
        self.rejected = 0
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`."""
        while not self.stopping.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with self._lock:
                full = len(self._conns) >= self.max_connections
            if full:
                log.warning("refusing %s:%s: %d connections open", addr[0], addr[1], self.max_connections)
                conn.close()
                continue
            t = threading.Thread(target=self._serve_conn, args=(conn, f"{addr[0]}:{addr[1]}"), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        self.sock.close()

    def start(self) -> threading.Thread:
        """Serve in a background thread."""
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        """Stop accepting and close every open connection."""
        self.stopping.set()
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve_conn(self, conn: socket.socket, peer: str) -> None:
        with self._lock:
            self._conns.add(conn)
        try:
            try:
                ch = Channel.server(conn, self.key, peer, self.timeout, self.max_frame_bytes)
            except ProtocolError as err:
                self.rejected += 1
                log.warning("rejected connection from %s: %s", peer, err)
                return
            while not self.stopping.is_set():
                try:
                    msg = ch.recv(idle_timeout=self.idle_timeout)
                except PeerClosed:
                    return
                except ProtocolError as err:
                    self.rejected += 1
                    log.warning("rejected frame from %s: %s", peer, err)
                    # the stream is out of sync or untrusted: say why once (best effort) and hang up
                    try:
                        ch.send(Message("error", {"error": str(err), "kind": type(err).__name__, "_close": True}))
                        if isinstance(err, FrameTooLarge):
                            _drain(conn, seconds=2.0)  # let the sender finish so it can read why
                    except (ProtocolError, OSError):
                        pass
                    ch.close()
                    return
                try:
                    reply = self.handler(msg)
                except Exception as err:  # the handler's failure is the peer's answer
                    log.debug("handler error for %s", msg.op, exc_info=True)
                    reply = Message("error", {"error": str(err) or type(err).__name__, "kind": type(err).__name__})
                try:
                    ch.send(reply)
                except ProtocolError:
                    return
                if reply.meta.get("_close"):
                    return
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass


class Client:
    """A thread-safe request/reply client for one device address, connecting lazily.

    After any transport error the connection is dropped; the next request reconnects. Requests are not
    retried here: retrying is a policy decision (see :mod:`fedintel.inference.multiaccess`).
    """

    def __init__(
        self, address: str, key: bytes, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        parse_address(address)
        self.address = address
        self.key = key
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_frame_bytes = max_frame_bytes
        self._ch: Channel | None = None
        self._lock = threading.Lock()
        self._last_used = 0.0

    def channel(self) -> Channel:
        """The open channel, connecting if needed (caller holds no lock; for tests and tools).

        A connection idle for more than :data:`RECONNECT_IDLE_S` is replaced before use, so a server that
        dropped it as idle never turns a new request into a spurious failure.
        """
        now = time.monotonic()
        stale = self._ch is not None and now - self._last_used > RECONNECT_IDLE_S
        self._last_used = now
        if self._ch is None or self._ch.closed or self._ch.broken or stale:
            if self._ch is not None:
                self._ch.close()
            self._ch = Channel.client(
                self.address, self.key, self.timeout, self.connect_timeout, self.max_frame_bytes
            )
        return self._ch

    def request(self, op: str, meta: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None,
                timeout: float | None = None) -> Message:
        """Send one request and return the reply (raises ProtocolError / RemoteError)."""
        with self._lock:
            ch = self.channel()
            try:
                return ch.request(Message(op, meta or {}, tensors or {}), timeout=timeout)
            except ProtocolError:
                ch.close()
                raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._ch is not None:
                self._ch.close()
                self._ch = None
