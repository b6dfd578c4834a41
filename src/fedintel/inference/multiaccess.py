"""Multi-access collaborative reasoning: several paths to several servers, one policy, no lost request.

A device reaches serving nodes over paths with their own rate, latency, availability and cost (cellular
to an edge server, device-to-device to a neighbour, a roadside unit). A *policy* ranks the paths for each
request; when the chosen path or node fails (connection refused or reset, timeout, the node dies in the
middle of the answer) the request is sent again on the next path, and the failed path rests for
``cooldown_s`` seconds. A request fails only when every path failed ``max_rounds`` times or its
``deadline_s`` ran out, and then with an error naming each attempt.

:class:`FaultyLink` is a real TCP relay that adds a path's latency and serialisation delay and drops a
share of requests, to inject path failures on loopback; it relays the TLS stream as it is (it sees only
ciphertext and cannot answer in a device's name). :func:`simulate_multiaccess` gives the same
policy's success rate and latency under the network model (Monte Carlo over availabilities).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedintel.inference.protocol import (
    Client,
    LinkSecurity,
    Message,
    ProtocolError,
    RemoteError,
    parse_address,
)

if TYPE_CHECKING:  # torch only in annotations: the CLI's --help stays fast
    import torch

log = logging.getLogger(__name__)

POLICIES = ("fastest", "cheapest", "most_available", "weighted", "round_robin")


class AllPathsFailed(RuntimeError):
    """Every path failed for one request; ``attempts`` lists (path, error) in order."""

    def __init__(self, message: str, attempts: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True)
class AccessPath:
    """One way to reach a serving node.

    ``rate_bps`` (bit/s) and ``latency_s`` (one way, seconds) model the link; ``availability`` is the
    probability the path works for a request (0..1); ``cost_per_mb`` is the price of a megabyte sent
    or received and ``cost_per_request`` a flat price per request.
    """

    name: str
    address: str
    kind: str = "cellular"
    rate_bps: float = 100e6
    latency_s: float = 0.01
    availability: float = 1.0
    cost_per_mb: float = 0.0
    cost_per_request: float = 0.0

    def __post_init__(self) -> None:
        parse_address(self.address)
        if not 0.0 <= self.availability <= 1.0:
            raise ValueError(f"path {self.name}: availability must be within 0..1, got {self.availability}")
        if self.rate_bps <= 0:
            raise ValueError(f"path {self.name}: rate_bps must be > 0")

    def expected_s(self, nbytes: float) -> float:
        """Modelled seconds for one request/reply of ``nbytes`` bytes in all, without failures."""
        return 2 * self.latency_s + 8.0 * nbytes / self.rate_bps

    def cost(self, nbytes: float) -> float:
        """Price of one request/reply of ``nbytes`` bytes."""
        return self.cost_per_request + self.cost_per_mb * nbytes / 1e6


def rank_paths(paths: Sequence[AccessPath], policy: str, nbytes: float, counter: int = 0,
               latency_weight: float = 1.0, cost_weight: float = 1.0) -> list[int]:
    """Path indices in the order ``policy`` would try them for a request of ``nbytes`` bytes."""
    idx = list(range(len(paths)))
    if policy == "fastest":
        # expected time counting retries on an unavailable path as one wasted attempt each
        return sorted(idx, key=lambda i: (paths[i].expected_s(nbytes) / max(paths[i].availability, 1e-9), i))
    if policy == "cheapest":
        return sorted(idx, key=lambda i: (paths[i].cost(nbytes), paths[i].expected_s(nbytes), i))
    if policy == "most_available":
        return sorted(idx, key=lambda i: (-paths[i].availability, paths[i].expected_s(nbytes), i))
    if policy == "weighted":
        return sorted(idx, key=lambda i: (latency_weight * paths[i].expected_s(nbytes) / max(paths[i].availability, 1e-9)
                                          + cost_weight * paths[i].cost(nbytes), i))
    if policy == "round_robin":
        k = counter % len(idx)
        return idx[k:] + idx[:k]
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


@dataclass
class Attempt:
    """One try of a request on one path."""

    path: str
    ok: bool
    seconds: float
    error: str = ""


@dataclass
class MultiAccessAnswer:
    """A request's reply, the path that served it and every attempt on the way."""

    index: int
    reply: Message
    path: str
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def retried(self) -> bool:
        """Whether the first path failed."""
        return len(self.attempts) > 1


class MultiAccessClient:
    """Sends requests over the best working path and retries on the others when one fails."""

    def __init__(self, paths: Sequence[AccessPath], security: LinkSecurity, policy: str = "fastest", timeout: float = 10.0,
                 connect_timeout: float = 2.0, cooldown_s: float = 5.0, max_rounds: int = 2,
                 deadline_s: float = 60.0, request_bytes: float = 2048.0) -> None:
        if not paths:
            raise ValueError("multi-access needs at least one path")
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"path names must be unique, got {names}")
        rank_paths(paths, policy, request_bytes)  # validates the policy name
        self.paths = list(paths)
        self.security = security
        self.policy = policy
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.cooldown_s = cooldown_s
        self.max_rounds = max_rounds
        self.deadline_s = deadline_s
        self.request_bytes = request_bytes
        self._down_until: dict[str, float] = {}
        self._counter = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all_clients: list[Client] = []

    def _client(self, i: int) -> Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        c = clients.get(i)
        if c is None:
            p = self.paths[i]
            c = clients[i] = Client(p.address, self.security, timeout=self.timeout, connect_timeout=self.connect_timeout)
            with self._lock:
                self._all_clients.append(c)
        return c

    def _order(self) -> list[int]:
        with self._lock:
            self._counter += 1
            order = rank_paths(self.paths, self.policy, self.request_bytes, self._counter)
            now = time.monotonic()
            up = [i for i in order if self._down_until.get(self.paths[i].name, 0.0) <= now]
            down = [i for i in order if i not in up]
        return up + down  # resting paths are tried last, not never

    def request(self, op: str, meta: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None,
                index: int = 0) -> MultiAccessAnswer:
        """Send one request; retry on other paths until it is answered (or every path failed)."""
        t_start = time.perf_counter()
        attempts: list[Attempt] = []
        for _ in range(self.max_rounds):
            for i in self._order():
                if time.perf_counter() - t_start > self.deadline_s:
                    break
                path = self.paths[i]
                t0 = time.perf_counter()
                try:
                    reply = self._client(i).request(op, meta, tensors)
                except (ProtocolError, OSError) as err:
                    attempts.append(Attempt(path.name, False, time.perf_counter() - t0, str(err)))
                    with self._lock:
                        self._down_until[path.name] = time.monotonic() + self.cooldown_s
                    log.info("request %d: path %s failed (%s); trying another", index, path.name, err)
                    continue
                except RemoteError as err:
                    if err.kind in ("WorkerError", "ValueError", "StageError"):  # the request itself is bad
                        raise
                    attempts.append(Attempt(path.name, False, time.perf_counter() - t0, str(err)))
                    continue
                attempts.append(Attempt(path.name, True, time.perf_counter() - t0))
                return MultiAccessAnswer(index, reply, path.name, attempts, time.perf_counter() - t_start)
        tried = "; ".join(f"{a.path}: {a.error}" for a in attempts)
        raise AllPathsFailed(f"request {index} failed on every path ({tried})", [(a.path, a.error) for a in attempts])

    def map(self, make_request: Callable[[int], tuple[str, dict[str, Any], dict[str, torch.Tensor]]], n: int,
            concurrency: int = 4) -> list[MultiAccessAnswer | AllPathsFailed]:
        """Run ``n`` requests (``make_request(i) -> (op, meta, tensors)``) with ``concurrency`` in flight."""

        def one(i: int) -> MultiAccessAnswer | AllPathsFailed:
            op, meta, tensors = make_request(i)
            try:
                return self.request(op, meta, tensors, index=i)
            except AllPathsFailed as err:
                return err

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, range(n)))

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            for c in self._all_clients:
                c.close()
            self._all_clients = []
        self._local = threading.local()


# ----------------------------------------------------------------------------- fault injection
class FaultyLink:
    """A TCP relay on 127.0.0.1 in front of ``target`` that behaves like a path.

    Every chunk is delayed by the path's one-way latency plus its serialisation time; with probability
    ``drop_prob`` a client-to-server chunk (one request, in practice) is not delivered and the connection
    is cut, as when a radio link drops. ``down`` cuts everything until cleared. Seeded, so runs repeat.
    """

    def __init__(self, target: str, latency_s: float = 0.0, rate_bps: float = 0.0, drop_prob: float = 0.0,
                 seed: int = 0) -> None:
        self.target = parse_address(target)
        self.latency_s = latency_s
        self.rate_bps = rate_bps
        self.drop_prob = drop_prob
        self.rng = random.Random(seed)
        self.down = threading.Event()
        self.drops = 0
        self._stop = threading.Event()
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(64)
        self._lsock.settimeout(0.2)
        self.address = f"127.0.0.1:{self._lsock.getsockname()[1]}"
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                a, _ = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down.is_set():
                a.close()
                continue
            try:
                b = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                a.close()
                continue
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            with self._lock:
                self._socks |= {a, b}
            threading.Thread(target=self._pump, args=(a, b, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(1 << 16)
                if not data or self.down.is_set():
                    break
                if upstream and self.drop_prob:
                    with self._lock:
                        drop = self.rng.random() < self.drop_prob
                    if drop:
                        self.drops += 1
                        break
                delay = self.latency_s + (8.0 * len(data) / self.rate_bps if self.rate_bps else 0.0)
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._socks -= {src, dst}

    def close(self) -> None:
        """Stop relaying and close every connection."""
        self._stop.set()
        self._lsock.close()
        with self._lock:
            for s in list(self._socks):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=2)


# ----------------------------------------------------------------------------- simulation
@dataclass
class MultiAccessSim:
    """Modelled outcome of a batch: success rate, mean and p95 latency (s), mean cost, path shares."""

    success_rate: float
    mean_s: float
    p95_s: float
    mean_cost: float
    served_by: dict[str, float]


def simulate_multiaccess(paths: Sequence[AccessPath], policy: str, n_requests: int, request_bytes: float,
                         compute_s: float = 0.0, detect_s: float = 0.2, max_rounds: int = 2,
                         seed: int = 0) -> MultiAccessSim:
    """Monte Carlo of the policy: each attempt on path ``p`` fails with probability ``1 - availability``
    and costs ``detect_s`` seconds to notice; a success costs the path's transfer time plus ``compute_s``."""
    rng = random.Random(seed)
    lat: list[float] = []
    costs: list[float] = []
    served: dict[str, int] = {p.name: 0 for p in paths}
    ok = 0
    for r in range(n_requests):
        order = rank_paths(paths, policy, request_bytes, r + 1)
        t = cost = 0.0
        done = False
        for _ in range(max_rounds):
            for i in order:
                p = paths[i]
                cost += p.cost(request_bytes)
                if rng.random() < p.availability:
                    t += p.expected_s(request_bytes) + compute_s
                    served[p.name] += 1
                    done = True
                    break
                t += detect_s
            if done:
                break
        ok += done
        if done:
            lat.append(t)
        costs.append(cost)
    lat.sort()
    return MultiAccessSim(
        success_rate=ok / max(1, n_requests),
        mean_s=sum(lat) / len(lat) if lat else float("nan"),
        p95_s=lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
        mean_cost=sum(costs) / max(1, n_requests),
        served_by={k: v / max(1, ok) for k, v in served.items()},
    )
