"""The wire protocol between devices: length-prefixed frames carrying raw tensors over mutual TLS.

One frame on the wire (inside the TLS stream)::

    prefix   17 bytes  struct "!4sBIQ": magic b"FEDI", version, header length (u32), payload length (u64)
    header   JSON      {"seq": n, "op": "...", "meta": {...}, "tensors": [{name, dtype, shape, offset, nbytes}]}
    payload  raw bytes the tensors, each 64-byte aligned, little-endian (no pickle anywhere)

**Links are mutual TLS** (the standard library's :mod:`ssl`, TLS 1.3 at least). Every device process has
its own certificate signed by the run's CA (:mod:`fedintel.tls`, the tooling behind ``fedintel deploy
certs``); both sides require and verify the peer's certificate, and a client checks the server's name:
the host it dialled (127.0.0.1, a DNS name) or, when it knows it, the device name it expects. A peer with
a certificate of another CA, without one, or speaking plaintext fails the handshake
(:class:`HandshakeError`). TLS encrypts prompts and hidden states and gives every connection fresh keys,
so a record tampered with, reordered, replayed, or recorded on one connection and injected into another
fails TLS's integrity check (:class:`IntegrityError`) and the connection closes; the handler never sees it.
TLS 1.3 0-RTT data (the one replayable part of TLS) is never enabled by :mod:`ssl`.

Every frame also carries a sequence number that must grow by one per connection (a second check within a
connection, and the only one in plaintext mode, :class:`ReplayError`). Across reconnects, each new
connection is a new TLS session; a request that a client re-sends after a reconnect is a retry the
client chose, and a split stage applies a forward only at the position its KV cache expects, so a
duplicate never advances a session twice.

Plaintext (``LinkSecurity.plaintext()``, ``--insecure``) exists for loopback experiments only: a plaintext
server or client on a non-loopback address is refused with a :class:`ValueError`.

Limits are checked on the prefix, before anything is read: a header over :data:`MAX_HEADER_BYTES` or a
frame over ``max_frame_bytes`` closes the connection with a :class:`FrameTooLarge` error. Every socket
operation, the TLS handshake included, has a timeout.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedintel import tls as _tls

log = logging.getLogger(__name__)

MAGIC = b"FEDI"
VERSION = 2
PREFIX = struct.Struct("!4sBIQ")
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_FRAME_BYTES = 64 << 20
DEFAULT_TIMEOUT_S = 30.0
ALIGN = 64
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


class HandshakeError(ProtocolError):
    """The TLS handshake failed: the peer's certificate is not from this run's CA, is missing, names
    another device, or the peer does not speak TLS (or refused our certificate)."""


class IntegrityError(ProtocolError):
    """A TLS record failed its integrity check (tampered, corrupted, replayed or from another connection)."""


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is this machine's loopback interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LinkSecurity:
    """How one process secures its links: mutual TLS as device ``name`` of the CA in ``cert_dir``, or
    plaintext (loopback only).

    Build it with :meth:`tls`, :meth:`fresh` or :meth:`plaintext`. The ``ssl`` contexts are built once, on
    first use. :meth:`device` gives the security of another device of the same CA (issuing its certificate
    when the CA key is there), which is how the launcher equips each process it starts.
    """

    def __init__(self, cert_dir: str | Path | None, name: str = "origin") -> None:
        self.cert_dir = Path(cert_dir).resolve() if cert_dir is not None else None
        self.name = _tls.check_name(name) if cert_dir is not None else name
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    @classmethod
    def tls(cls, cert_dir: str | Path, name: str = "origin", hosts: Sequence[str] = _tls.DEFAULT_HOSTS,
            issue: bool = True) -> LinkSecurity:
        """Device ``name`` of the CA in ``cert_dir``; with ``issue``, its certificate is issued (for
        ``hosts``) when the directory has the CA key but no certificate for ``name`` yet."""
        if issue:
            crt, key = _tls.device_paths(cert_dir, name)
            if not (crt.is_file() and key.is_file()) and _tls.ca_paths(cert_dir)[1].is_file():
                _tls.issue_device_cert(cert_dir, name, hosts)
        sec = cls(cert_dir, name)
        sec.client_context()  # fail now, with the missing file named, not at the first request
        return sec

    @classmethod
    def fresh(cls, cert_dir: str | Path, name: str = "origin") -> LinkSecurity:
        """A new CA written into ``cert_dir`` and device ``name``'s certificate from it."""
        _tls.write_ca(cert_dir)
        return cls.tls(cert_dir, name)

    @classmethod
    def plaintext(cls) -> LinkSecurity:
        """No TLS: frames in clear, no authentication. For experiments on loopback only."""
        return cls(None, "")

    @property
    def insecure(self) -> bool:
        """Whether links are plaintext."""
        return self.cert_dir is None

    def device(self, name: str, hosts: Sequence[str] = _tls.DEFAULT_HOSTS) -> LinkSecurity:
        """The security of device ``name`` under the same CA (its certificate issued if missing)."""
        if self.cert_dir is None:
            return LinkSecurity.plaintext()
        _tls.ensure_device_cert(self.cert_dir, name, hosts)
        return LinkSecurity(self.cert_dir, name)

    def worker_args(self) -> list[str]:
        """The worker command-line options that give a device process this security."""
        return ["--insecure"] if self.cert_dir is None else ["--certs", str(self.cert_dir), "--name", self.name]

    def server_context(self) -> ssl.SSLContext:
        """The server-side mutual-TLS context (built once)."""
        if self.cert_dir is None:
            raise ValueError("plaintext links have no TLS context")
        with self._lock:
            if self._server is None:
                self._server = _tls.server_context(self.cert_dir, self.name)
            return self._server

    def client_context(self) -> ssl.SSLContext:
        """The client-side mutual-TLS context (built once)."""
        if self.cert_dir is None:
            raise ValueError("plaintext links have no TLS context")
        with self._lock:
            if self._client is None:
                self._client = _tls.client_context(self.cert_dir, self.name)
            return self._client

    def check_host(self, host: str, what: str) -> None:
        """Refuse plaintext on a non-loopback ``host`` (``what`` says where it came from)."""
        if self.insecure and not is_loopback(host):
            raise ValueError(f"{what} {host!r} is not a loopback address: plaintext links (--insecure / insecure: "
                             "true) are for loopback experiments only; drop --insecure to use mutual TLS")

    def __repr__(self) -> str:
        return "LinkSecurity(plaintext)" if self.insecure else f"LinkSecurity({str(self.cert_dir)!r}, {self.name!r})"


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
    """One connection (mutual TLS, or plaintext on loopback): frames out with a growing sequence number,
    frames in checked.

    Build it with :meth:`client` or :meth:`server`, which run the TLS handshake. ``peer_name`` is the
    common name of the peer's certificate ("" in plaintext). Not thread-safe: one request/reply at a time
    (callers hold a lock).
    """

    def __init__(
        self, sock: socket.socket, peer: str, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.peer_name = _peer_name(sock)
        self.max_frame_bytes = max_frame_bytes
        self.timeout = timeout
        self.send_seq = 0
        self.recv_seq = 0
        self.closed = False
        self.broken = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def encrypted(self) -> bool:
        """Whether this connection runs over TLS."""
        return isinstance(self.sock, TLSStream)

    @property
    def raw(self) -> socket.socket:
        """The TCP socket underneath (the ciphertext stream, under TLS)."""
        return self.sock.sock if isinstance(self.sock, TLSStream) else self.sock

    # ---------------------------------------------------------------- handshake
    @classmethod
    def client(
        cls, address: str, security: LinkSecurity, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, server_name: str | None = None,
    ) -> Channel:
        """Connect to ``address`` and run the TLS handshake; the server's certificate must name
        ``server_name`` (default: the host of ``address``)."""
        host, port = parse_address(address)
        security.check_host(host, "device address")
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except TimeoutError:
            raise PeerTimeout(f"connecting to {address} timed out after {connect_timeout:g} s") from None
        except OSError as err:
            raise PeerClosed(f"cannot connect to device at {address}: {err.strerror or err}") from None
        _tune(sock)
        try:
            return cls.client_on(sock, security, address, timeout, max_frame_bytes, connect_timeout + timeout,
                                 server_name or host)
        except BaseException:
            sock.close()  # idempotent: a failed handshake has closed it already
            raise

    @classmethod
    def client_on(
        cls, sock: socket.socket, security: LinkSecurity, peer: str, timeout: float = DEFAULT_TIMEOUT_S,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, handshake_timeout: float | None = None,
        server_name: str = "localhost",
    ) -> Channel:
        """Run the client side of the TLS handshake on a connected socket (closed on failure)."""
        if not security.insecure:
            sock = _handshake(sock, security.client_context(), peer, handshake_timeout or timeout,
                              server_side=False, server_name=server_name)
        sock.settimeout(timeout)
        return cls(sock, peer, max_frame_bytes, timeout)

    @classmethod
    def server(
        cls, sock: socket.socket, security: LinkSecurity, peer: str, timeout: float = DEFAULT_TIMEOUT_S,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> Channel:
        """Run the server side of the TLS handshake on an accepted connection (closed on failure)."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _tune(sock)
        if not security.insecure:
            sock = _handshake(sock, security.server_context(), peer, timeout, server_side=True)
        sock.settimeout(timeout)
        return cls(sock, peer, max_frame_bytes, timeout)

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
        return b"".join([prefix, header, *chunks])

    def send_bytes(self, data: bytes) -> None:
        """Send an already encoded frame."""
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.close()
            raise PeerTimeout(f"sending to {self.peer} timed out after {self.timeout:g} s") from None
        except ssl.SSLError as err:
            self.broken = True
            raise _tls_failure(err, self.peer) from None
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
        except ProtocolError:
            self.broken = True
            raise
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
        self.bytes_received += PREFIX.size + header_len + payload_len
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
            except ssl.SSLError as err:
                raise _tls_failure(err, self.peer) from None
            except OSError as err:
                raise PeerClosed(f"connection to {self.peer} lost: {err}") from None
            if k == 0:
                raise PeerClosed(f"{self.peer} closed the connection")
            if not started:
                started = True
                deadline = time.monotonic() + timeout
            got += k


SOCKET_BUFFER_BYTES = 4 << 20
"""Send and receive buffer asked for each connection: a whole activation fits, so a sender rarely waits for
the receiver to be scheduled (the kernel may grant less)."""


def _tune(sock: socket.socket) -> None:
    """No Nagle delay; socket buffers of :data:`SOCKET_BUFFER_BYTES`."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
        except OSError:
            pass


def _peer_name(sock: socket.socket) -> str:
    if not isinstance(sock, TLSStream):
        return ""
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return ""


class TLSStream:
    """A TLS connection over a socket, through :class:`ssl.MemoryBIO` s.

    The socket-like subset the channel uses (``sendall``, ``recv_into``, ``settimeout``, ``close``).
    Ciphertext moves in large reads and writes, many 16 KiB TLS records per system call, where
    :class:`ssl.SSLSocket` makes one write and two reads per record (on a 393 KB activation, 48 system
    calls instead of about 150 per round trip; some 15 % faster here, within the noise of a loaded machine).
    """

    CHUNK = 1 << 18
    """Bytes encrypted, then sent, at a time (bounds the memory a large frame takes in ciphertext)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool, server_name: str | None) -> None:
        self.sock = sock
        self.family = sock.family
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=server_side,
                                 server_hostname=None if server_side else server_name)
        self._buf = bytearray(self.CHUNK)

    def do_handshake(self) -> None:
        """Run the TLS handshake (raises ``ssl.SSLError``, ``TimeoutError``, ``OSError``)."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except ssl.SSLError:
                self._flush_quietly()  # our alert tells the peer why
                raise
            self._flush()
            return

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of ``data``."""
        view = memoryview(data).cast("B")
        try:
            for i in range(0, len(view), self.CHUNK):
                chunk = view[i:i + self.CHUNK]
                while chunk:
                    chunk = chunk[self._tls.write(chunk):]
                self._flush()
        except ssl.SSLError:
            self._flush_quietly()
            raise

    def recv_into(self, buf: memoryview | bytearray, nbytes: int = 0) -> int:
        """Decrypt up to ``nbytes`` bytes into ``buf``; 0 when the peer closed the connection."""
        n = nbytes or len(buf)
        while True:
            try:
                return self._tls.read(n, buf)
            except ssl.SSLWantReadError:
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0
            except ssl.SSLError:
                self._flush_quietly()
                raise

    def _fill(self) -> None:
        k = self.sock.recv_into(self._buf)
        if k:
            self._in.write(memoryview(self._buf)[:k])
        else:
            self._in.write_eof()

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except OSError:
            pass

    def settimeout(self, timeout: float | None) -> None:
        """Timeout of each socket operation, seconds."""
        self.sock.settimeout(timeout)

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self.sock.fileno()

    def version(self) -> str | None:
        """The negotiated TLS version, e.g. ``"TLSv1.3"``."""
        return self._tls.version()

    def getpeercert(self) -> dict[str, Any]:
        """The peer's verified certificate, as :meth:`ssl.SSLSocket.getpeercert` gives it."""
        return self._tls.getpeercert() or {}

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _handshake(sock: socket.socket, ctx: ssl.SSLContext, peer: str, timeout: float, server_side: bool,
               server_name: str | None = None) -> TLSStream:
    """Run TLS over ``sock`` and complete the handshake within ``timeout`` seconds; close it on failure."""
    try:
        tsock = TLSStream(sock, ctx, server_side, server_name)
    except (ssl.SSLError, ValueError) as err:
        sock.close()
        raise HandshakeError(f"TLS set-up for {peer} failed: {err}") from None
    try:
        sock.settimeout(timeout)
        tsock.do_handshake()
    except ssl.SSLCertVerificationError as err:
        tsock.close()
        hint = "not of this run's CA" + ("" if server_side else f", or not valid for {server_name!r}")
        raise HandshakeError(f"TLS handshake with {peer} failed: its certificate was refused "
                             f"({err.verify_message}; {hint}?)") from None
    except ssl.SSLError as err:
        tsock.close()
        raise HandshakeError(f"TLS handshake with {peer} failed: {_ssl_reason(err)} (no certificate, a "
                             "certificate of another CA, or not a TLS peer)") from None
    except TimeoutError:
        tsock.close()
        raise PeerTimeout(f"TLS handshake with {peer} timed out after {timeout:g} s") from None
    except OSError as err:
        tsock.close()
        raise HandshakeError(f"TLS handshake with {peer} failed: the connection closed ({err.strerror or err}); "
                             "the peer refused our certificate or does not speak TLS") from None
    return tsock


def _ssl_reason(err: ssl.SSLError) -> str:
    return str(err.reason or err).lower().replace("_", " ")


def _tls_failure(err: ssl.SSLError, peer: str) -> ProtocolError:
    """The protocol error for a TLS failure after the handshake (reading or writing a record)."""
    if isinstance(err, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return PeerClosed(f"{peer} closed the TLS connection")
    reason = _ssl_reason(err)
    if "certificate" in reason or "unknown ca" in reason or "handshake" in reason:
        # TLS 1.3: a client learns that the server refused its certificate at its first read
        return HandshakeError(f"{peer} refused our certificate ({reason})")
    return IntegrityError(f"TLS record from {peer} failed its integrity check ({reason}): tampered with, corrupted, "
                          "replayed or injected from another connection; connection closed")


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
    """A threaded TCP server: one thread per connection (TLS handshake included), each frame passed to
    ``handler``.

    A handler exception becomes an ``error`` reply naming the exception; a connection that fails the TLS
    handshake is closed (counted in ``rejected``); a frame that fails the integrity, replay or size check
    gets an ``error`` reply (when the stream is still in sync) and the connection is closed; the handler
    never sees it. Plaintext ``security`` is refused on a non-loopback ``host`` (``ValueError``).
    """

    def __init__(
        self, handler: Handler, security: LinkSecurity, host: str = "127.0.0.1", port: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, timeout: float = DEFAULT_TIMEOUT_S,
        idle_timeout: float = SERVER_IDLE_S, max_connections: int = 256,
    ) -> None:
        security.check_host(host, "listen address")
        if not security.insecure:
            security.server_context()  # a missing certificate fails here, before we listen
        self.handler = handler
        self.max_connections = max_connections
        self.security = security
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
                ch = Channel.server(conn, self.security, peer, self.timeout, self.max_frame_bytes)
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
                            _drain(ch.raw, seconds=2.0)  # let the sender finish so it can read why
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

    Over TLS the server's certificate must name ``server_name`` when given (the device name expected
    there), else the host of ``address``. Plaintext ``security`` is refused for a non-loopback address.

    After any transport error the connection is dropped; the next request reconnects. Requests are not
    retried here: retrying is a policy decision (see :mod:`fedintel.inference.multiaccess`).
    """

    def __init__(
        self, address: str, security: LinkSecurity, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, server_name: str | None = None,
    ) -> None:
        host, _ = parse_address(address)
        security.check_host(host, "device address")
        self.address = address
        self.security = security
        self.server_name = server_name
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
                self.address, self.security, self.timeout, self.connect_timeout, self.max_frame_bytes,
                self.server_name,
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
