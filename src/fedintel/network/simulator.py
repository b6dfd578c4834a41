"""The wireless edge network as the schemes see it: how long a round takes, what it costs, who drops out.

A round, for each selected client: download the global adapter, train (FLOPs / device FLOP/s), upload the
delta over its share of the uplink band. Times are simulated seconds; nothing sleeps.

Modelling choices (documented, so results can be read correctly):

* **Downlink** is a broadcast over the whole band at ``bs_tx_power_dbm``; each client decodes at its own
  Shannon rate (rateless coding), so its download takes ``8 * bytes_down / rate_down``. Clients may be
  sent different payloads (e.g. per-cluster adapters), treated as multicast over the same band.
* **Uplink** is FDMA: the band is split among the round's uploading clients by the allocation policy
  (``equal`` or ``min_max_latency``); a client holds its share for its whole upload.
* **Outage**: a client whose downlink rate, or uplink rate at an equal share of the band, is below
  ``min_rate_bps`` is dropped at the start of the round (reason ``"outage"``), before allocation.
* **Deadline** (``deadline_s`` set, whatever the selection policy): the scheduler, knowing channels and
  device speeds, leaves out the fewest clients it must so the rest finish within ``deadline_s`` (one at
  a time: the latest client under ``equal``, the one needing most bandwidth under ``min_max_latency``),
  and shares the band among the rest. Left-out clients are dropped with reason ``"deadline"``; they
  train until the deadline at most (compute energy counted), and never transmit.
* The round ends when the last accepted client's upload finishes, plus ``aggregation_time_s``; if every
  client was dropped, at the deadline (if one was missed) or at the start.
* **Energy**: transmit energy = transmit power x upload airtime; compute energy from the device profile.
  Receive and idle energy are not counted.
* **Over-the-air uplink** (``analog`` given, ``aggregation.rule: ota``; :mod:`aircomp`): no band split. When
  the last participant has finished computing, every transmitting client sends its ``entries_up`` values at
  once as analog symbols over the whole band, one slot of ``entries / bandwidth_hz`` seconds for all of them
  (``slots`` groups that must be summed apart, e.g. clusters, take one slot each, back to back). Truncated
  clients (deep fade) stay silent: not dropped, their update reaches the aggregator, which leaves it out of the
  sum; upload time and transmit energy 0. Transmit energy = the client's power-controlled power x slot time.
  Uplink outage does not apply (truncation replaces it); downlink outage and the deadline do (the deadline
  drops the latest-computing clients until the slots end in time).
* **Edge servers** (``edge_servers > 0``, hierarchical scheme): each client's radio link is to its nearest
  edge server (``client_edge``), which has a band of its own: call :meth:`WirelessNetwork.simulate_round`
  once per edge server with that server's clients, then add :meth:`WirelessNetwork.backhaul_time`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedintel.network import clock
from fedintel.network.aircomp import AnalogPlan, AnalogUplink, analog_slot_s
from fedintel.network.allocation import bandwidth_needed, equal_split, min_max_latency
from fedintel.network.channel import ChannelState, draw_channel
from fedintel.network.clock import Event, EventQueue
from fedintel.network.config import NetworkConfig
from fedintel.network.devices import DeviceProfile, check_memory, sample_profiles
from fedintel.network.selection import select_by_deadline, select_fastest, select_random
from fedintel.network.topology import drop_users, nearest, place_edge_servers

log = logging.getLogger(__name__)

_CHANNEL_CACHE = 256
_REL_TOL = 1e-9


@dataclass(frozen=True)
class ClientJob:
    """One client's work in a round: FLOPs to train, bytes to upload and to download.

    ``entries_up``: values it sends as analog symbols when the uplink is over the air (ignored otherwise).
    """

    client_id: int
    flops: float
    bytes_up: int
    bytes_down: int
    entries_up: int = 0


@dataclass
class ClientTiming:
    """What a round cost one client. Durations in seconds, ``finish_s`` absolute simulated time.

    For a dropped client, ``finish_s`` is when the server gave up on it (start of round for an outage, the
    deadline for a late client), ``upload_s``, ``bandwidth_up_hz`` and ``energy_tx_j`` are 0, and
    ``rate_up_bps`` is the rate it would have had at an equal share of the band. Over the air,
    ``rate_up_bps`` is the payload's bits over the slot and a ``truncated`` client sends nothing.
    """

    client_id: int
    start_s: float
    download_s: float
    compute_s: float
    upload_s: float
    finish_s: float
    rate_up_bps: float
    rate_down_bps: float
    bandwidth_up_hz: float
    energy_tx_j: float
    energy_compute_j: float
    bytes_up: int = 0
    bytes_down: int = 0
    dropped: bool = False
    reason: str = ""
    tx_power_w: float = 0.0
    """Transmit power during the upload, W (power-controlled over the air)."""
    truncated: bool = False
    """Over the air: silent this round (channel below the truncation threshold)."""

    @property
    def duration_s(self) -> float:
        """``finish_s - start_s``."""
        return self.finish_s - self.start_s


@dataclass
class RoundTiming:
    """The timing of one synchronous round: per-client costs, drops, and its events in time order."""

    round_idx: int
    start_s: float
    end_s: float
    clients: dict[int, ClientTiming]
    dropped: list[int]
    events: list[Event] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """``end_s - start_s`` in seconds."""
        return self.end_s - self.start_s

    @property
    def accepted(self) -> list[int]:
        """Clients whose update arrived in time, sorted."""
        return sorted(c for c, t in self.clients.items() if not t.dropped)


@dataclass
class _Prep:
    job: ClientJob
    profile: DeviceProfile
    rate_down: float
    download_s: float
    compute_s: float

    @property
    def fixed_s(self) -> float:
        return self.download_s + self.compute_s

    @property
    def bits_up(self) -> float:
        return 8.0 * self.job.bytes_up


class WirelessNetwork:
    """A cell with ``num_clients`` users, their device profiles, and per-round channels.

    Everything random is drawn from streams keyed by ``seed`` (positions and profiles per client, channels
    per round), so the same config and seed give the same positions, fades and times, whatever the order
    of calls. ``positions`` (``[n, 2]`` metres) places the users explicitly instead of dropping them.
    ``model_bytes`` is the memory a device needs to hold the model; a ``ValueError`` naming
    ``network.devices.memory_bytes`` is raised if some device cannot.
    """

    def __init__(
        self,
        cfg: NetworkConfig,
        num_clients: int,
        seed: int,
        model_bytes: int = 0,
        *,
        positions: np.ndarray | None = None,
    ) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if model_bytes < 0:
            raise ValueError(f"model_bytes must be >= 0, got {model_bytes}")
        self.cfg = cfg
        self.num_clients = int(num_clients)
        self.seed = int(seed)
        if positions is None:
            self.positions = drop_users(num_clients, cfg.cell_radius_m, cfg.min_distance_m, seed)
        else:
            pos = np.asarray(positions, dtype=float)
            if pos.shape != (num_clients, 2) or not np.all(np.isfinite(pos)):
                raise ValueError(
                    f"positions must be a finite [{num_clients}, 2] array of metres, got {pos.shape}"
                )
            self.positions = pos.copy()
        self.distances_m: np.ndarray = np.maximum(np.linalg.norm(self.positions, axis=1), cfg.min_distance_m)
        """Distance of each user to the base station, metres."""
        self.edge_positions: np.ndarray = place_edge_servers(cfg.edge_servers, cfg.cell_radius_m)
        if cfg.edge_servers > 0:
            self.client_edge, link = nearest(self.positions, self.edge_positions)
            self.link_distances_m: np.ndarray = np.maximum(link, cfg.min_distance_m)
        else:
            self.client_edge = np.full(num_clients, -1, dtype=int)
            self.link_distances_m = self.distances_m.copy()
        """Distance of each user to its serving node (nearest edge server, else the base station), metres."""
        self.profiles: list[DeviceProfile] = sample_profiles(cfg.devices, num_clients, seed)
        check_memory(self.profiles, model_bytes, explicit=cfg.devices.profiles is not None)
        self.model_bytes = int(model_bytes)
        self._channels: dict[int, ChannelState] = {}

    # ------------------------------------------------------------------ channel and links

    def channel(self, round_idx: int) -> ChannelState:
        """Every client's channel in round ``round_idx`` (deterministic in ``(seed, round_idx)``)."""
        if round_idx < 0:
            raise ValueError(f"round_idx must be >= 0, got {round_idx}")
        ch = self._channels.get(round_idx)
        if ch is None:
            ch = draw_channel(self.cfg, self.link_distances_m, self.seed, round_idx)
            if len(self._channels) >= _CHANNEL_CACHE:
                self._channels.pop(next(iter(self._channels)))
            self._channels[round_idx] = ch
        return ch

    def backhaul_time(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` between an edge server and the base station."""
        return _link_time(nbytes, self.cfg.backhaul_rate_bps, self.cfg.backhaul_latency_s)

    def cloud_time(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` between the base station and the cloud."""
        return _link_time(nbytes, self.cfg.cloud_rate_bps, self.cfg.cloud_latency_s)

    def edge_groups(self, clients: Sequence[int] | None = None) -> dict[int, list[int]]:
        """Clients (all, or ``clients``) grouped by serving edge server (key -1: the base station)."""
        ids = range(self.num_clients) if clients is None else clients
        groups: dict[int, list[int]] = {}
        for c in sorted(int(c) for c in ids):
            self._check_client(c)
            groups.setdefault(int(self.client_edge[c]), []).append(c)
        return groups

    # ------------------------------------------------------------------ one client

    def client_timing(
        self, round_idx: int, start_s: float, job: ClientJob, bandwidth_hz: float
    ) -> ClientTiming:
        """One client alone, starting at ``start_s`` with ``bandwidth_hz`` of uplink (asynchronous scheme).

        An outage (a rate below ``min_rate_bps``) gives a dropped timing finishing at ``start_s``.
        """
        self._check_jobs([job])
        if not (bandwidth_hz > 0 and math.isfinite(bandwidth_hz)):
            raise ValueError(f"bandwidth_hz must be > 0 Hz, got {bandwidth_hz}")
        ch = self.channel(round_idx)
        p = self._prepare(ch, job)
        rate_up = ch.uplink_rate(job.client_id, bandwidth_hz)
        if self._outage(p, rate_up):
            return self._dropped(p, start_s, rate_up, "outage", start_s)
        return self._served(ch, p, start_s, bandwidth_hz)

    # ------------------------------------------------------------------ a synchronous round

    def simulate_round(
        self,
        round_idx: int,
        start_s: float,
        jobs: Sequence[ClientJob],
        *,
        analog: AnalogUplink | None = None,
        slots: Sequence[Sequence[int]] | None = None,
    ) -> RoundTiming:
        """Time a synchronous round of ``jobs`` starting at ``start_s`` (see the module docstring).

        ``analog`` makes the uplink over the air; ``slots`` then groups the clients summed apart (one analog
        slot each, back to back; default: all in one slot).
        """
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ValueError(f"start_s must be a finite time >= 0 s, got {start_s}")
        self._check_jobs(jobs)
        if analog is not None:
            return self._simulate_analog(round_idx, start_s, jobs, analog, slots)
        if slots is not None:
            raise ValueError("slots group the clients of an over-the-air uplink; pass analog too")
        ch = self.channel(round_idx)
        accepted, shares, drops, eq_rates = self._plan(ch, jobs, apply_deadline=True)
        timings: dict[int, ClientTiming] = {}
        deadline_at = start_s + self.cfg.deadline_s if self.cfg.deadline_s is not None else math.inf
        for c, (p, reason) in drops.items():
            at = start_s if reason == "outage" else deadline_at
            timings[c] = self._dropped(p, start_s, eq_rates[c], reason, at)
        for p in accepted:
            timings[p.job.client_id] = self._served(ch, p, start_s, shares[p.job.client_id])
        if accepted:
            end_s = max(timings[p.job.client_id].finish_s for p in accepted) + self.cfg.aggregation_time_s
        elif any(reason == "deadline" for _, reason in drops.values()):
            end_s = deadline_at
        else:
            end_s = start_s
        dropped = sorted(drops)
        if dropped:
            log.info("round %d: dropped %s", round_idx, {c: drops[c][1] for c in dropped})
        return RoundTiming(
            round_idx=round_idx,
            start_s=start_s,
            end_s=end_s,
            clients=dict(sorted(timings.items())),
            dropped=dropped,
            events=_round_events(round_idx, timings, end_s, bool(accepted)),
        )

    def analog_plan(self, round_idx: int, client_ids: Sequence[int], analog: AnalogUplink) -> AnalogPlan:
        """Truncation and transmit powers of ``client_ids`` (in that order) summed in one analog slot."""
        ch = self.channel(round_idx)
        ids = [int(c) for c in client_ids]
        for c in ids:
            self._check_client(c)
        return analog.plan(ch.gain_up[ids], ch.tx_power_w, ch.noise_psd_w_hz * ch.bandwidth_hz)

    def _simulate_analog(
        self,
        round_idx: int,
        start_s: float,
        jobs: Sequence[ClientJob],
        analog: AnalogUplink,
        slots: Sequence[Sequence[int]] | None,
    ) -> RoundTiming:
        ch = self.channel(round_idx)
        groups = [[int(c) for c in g] for g in slots] if slots is not None else [[j.client_id for j in jobs]]
        slot_of = {c: i for i, g in enumerate(groups) for c in g}
        if sorted(slot_of) != sorted(j.client_id for j in jobs) or sum(map(len, groups)) != len(jobs):
            raise ValueError("slots must hold every client of the round exactly once")
        slot_s = analog_slot_s(max((j.entries_up for j in jobs), default=0), self.cfg.bandwidth_hz)
        drops: dict[int, tuple[_Prep, str]] = {}
        kept: list[_Prep] = []
        for job in jobs:
            p = self._prepare(ch, job)
            if self._outage(p, math.inf):  # over the air only the downlink can be in outage
                drops[job.client_id] = (p, "outage")
            else:
                kept.append(p)

        def schedule(kept: list[_Prep]) -> tuple[dict[int, tuple[int, float, bool]], float]:
            """client -> (slot index, power, transmits); and when the last slot ends (s after start)."""
            out: dict[int, tuple[int, float, bool]] = {}
            present = {p.job.client_id for p in kept}
            used = 0
            for g in groups:
                members = [c for c in g if c in present]
                if not members:
                    continue
                plan = self.analog_plan(round_idx, members, analog)
                for c, pw, tx in zip(members, plan.power_w, plan.transmit, strict=True):
                    out[c] = (used, float(pw), bool(tx))
                used += plan.num_transmitting > 0
            t0 = max((p.fixed_s for p in kept), default=0.0)
            return out, t0 + used * slot_s

        sched, end_rel = schedule(kept)
        if self.cfg.deadline_s is not None:
            limit = self.cfg.deadline_s * (1.0 + _REL_TOL)
            while kept and end_rel > limit:
                late = max(kept, key=lambda p: (p.fixed_s, p.job.client_id))
                kept.remove(late)
                drops[late.job.client_id] = (late, "deadline")
                sched, end_rel = schedule(kept)
        deadline_at = start_s + self.cfg.deadline_s if self.cfg.deadline_s is not None else math.inf
        t0 = start_s + max((p.fixed_s for p in kept), default=0.0)
        timings: dict[int, ClientTiming] = {}
        for c, (p, reason) in drops.items():
            timings[c] = self._dropped(p, start_s, 0.0, reason, start_s if reason == "outage" else deadline_at)
        for p in kept:
            c = p.job.client_id
            idx, power, tx = sched[c]
            upload_s = slot_s if tx else 0.0
            timings[c] = ClientTiming(
                client_id=c, start_s=start_s, download_s=p.download_s, compute_s=p.compute_s, upload_s=upload_s,
                finish_s=t0 + (idx + 1) * slot_s if tx else start_s + p.fixed_s,
                rate_up_bps=p.bits_up / slot_s if tx and slot_s > 0 else 0.0, rate_down_bps=p.rate_down,
                bandwidth_up_hz=self.cfg.bandwidth_hz if tx else 0.0, energy_tx_j=power * upload_s,
                energy_compute_j=p.profile.compute_energy(p.job.flops), bytes_up=p.job.bytes_up,
                bytes_down=p.job.bytes_down, tx_power_w=power, truncated=not tx,
            )
        if kept:
            end_s = start_s + end_rel + self.cfg.aggregation_time_s
        elif any(reason == "deadline" for _, reason in drops.values()):
            end_s = deadline_at
        else:
            end_s = start_s
        dropped = sorted(drops)
        if dropped:
            log.info("round %d: dropped %s", round_idx, {c: drops[c][1] for c in dropped})
        return RoundTiming(round_idx=round_idx, start_s=start_s, end_s=end_s, clients=dict(sorted(timings.items())),
                           dropped=dropped, events=_round_events(round_idx, timings, end_s, bool(kept)))

    def estimate_times(
        self,
        round_idx: int,
        client_ids: Sequence[int],
        flops: dict[int, float],
        bytes_up: dict[int, int],
        bytes_down: dict[int, int],
    ) -> dict[int, float]:
        """Estimated round duration (s) of each client if ``client_ids`` all took part in the round.

        The band is split among them by the allocation policy; no deadline is applied. Clients in outage
        get ``inf``.
        """
        jobs = [ClientJob(int(c), float(flops[c]), int(bytes_up[c]), int(bytes_down[c])) for c in client_ids]
        self._check_jobs(jobs)
        ch = self.channel(round_idx)
        accepted, shares, drops, _ = self._plan(ch, jobs, apply_deadline=False)
        out = {c: math.inf for c in drops}
        for p in accepted:
            c = p.job.client_id
            out[c] = p.fixed_s + _upload_s(p.bits_up, ch.uplink_rate(c, shares[c]))
        return dict(sorted(out.items()))

    def select(
        self,
        round_idx: int,
        candidates: list[int],
        k: int,
        rng: np.random.Generator,
        flops_estimate: float,
        bytes_estimate: int,
        *,
        analog: AnalogUplink | None = None,
        entries_estimate: int = 0,
    ) -> list[int]:
        """Pick up to ``k`` of ``candidates`` by the configured selection policy (sorted ids).

        ``fastest_k`` and ``deadline`` rank candidates by the time each would take at a ``1/k`` share of
        the band, training ``flops_estimate`` FLOPs and moving ``bytes_estimate`` bytes each way (over the air,
        ``analog``: one slot of ``entries_estimate`` values). ``random`` uses only ``rng``. ``deadline`` may
        return fewer than ``k`` clients, even none.
        """
        policy = self.cfg.selection
        if policy == "random":
            return select_random(candidates, k, rng)
        times = self._solo_times(
            round_idx, candidates, max(1, min(k, len(candidates))), flops_estimate, bytes_estimate,
            None if analog is None else analog_slot_s(entries_estimate, self.cfg.bandwidth_hz),
        )
        if policy == "fastest_k":
            return select_fastest(times, k)
        assert self.cfg.deadline_s is not None  # the config validator requires it
        return select_by_deadline(times, k, self.cfg.deadline_s, rng)

    # ------------------------------------------------------------------ internals

    def _check_client(self, c: int) -> None:
        if not (0 <= c < self.num_clients):
            raise ValueError(f"unknown client {c}: the network has clients 0..{self.num_clients - 1}")

    def _check_jobs(self, jobs: Sequence[ClientJob]) -> None:
        seen: set[int] = set()
        for j in jobs:
            self._check_client(j.client_id)
            if j.client_id in seen:
                raise ValueError(f"client {j.client_id} appears twice in one round")
            seen.add(j.client_id)
            if not (j.flops >= 0 and math.isfinite(j.flops)):
                raise ValueError(f"client {j.client_id}: flops must be finite and >= 0, got {j.flops}")
            if j.bytes_up < 0 or j.bytes_down < 0:
                raise ValueError(f"client {j.client_id}: byte counts must be >= 0")

    def _prepare(self, ch: ChannelState, job: ClientJob) -> _Prep:
        c = job.client_id
        prof = self.profiles[c]
        rate_down = ch.downlink_rate(c)
        return _Prep(
            job, prof, rate_down, _upload_s(8.0 * job.bytes_down, rate_down), prof.compute_time(job.flops)
        )

    def _outage(self, p: _Prep, rate_up: float) -> bool:
        floor = self.cfg.min_rate_bps
        down_bad = p.job.bytes_down > 0 and not (p.rate_down >= floor and p.rate_down > 0)
        up_bad = p.job.bytes_up > 0 and not (rate_up >= floor and rate_up > 0)
        return down_bad or up_bad

    def _plan(
        self, ch: ChannelState, jobs: Sequence[ClientJob], apply_deadline: bool
    ) -> tuple[list[_Prep], dict[int, float], dict[int, tuple[_Prep, str]], dict[int, float]]:
        """Who is served with what bandwidth; who is dropped and why; each client's equal-share rate."""
        drops: dict[int, tuple[_Prep, str]] = {}
        eq_rates: dict[int, float] = {}
        active: list[_Prep] = []
        eq_share = self.cfg.bandwidth_hz / max(1, len(jobs))
        for job in jobs:
            p = self._prepare(ch, job)
            eq_rates[job.client_id] = ch.uplink_rate(job.client_id, eq_share)
            if self._outage(p, eq_rates[job.client_id]):
                drops[job.client_id] = (p, "outage")
            else:
                active.append(p)
        if apply_deadline and self.cfg.deadline_s is not None:
            active, late = self._fit_deadline(ch, active, self.cfg.deadline_s)
            for p in late:
                drops[p.job.client_id] = (p, "deadline")
        return active, self._allocate(ch, active), drops, eq_rates

    def _allocate(self, ch: ChannelState, active: Sequence[_Prep]) -> dict[int, float]:
        ids = [p.job.client_id for p in active]
        if not ids:
            return {}
        total = self.cfg.bandwidth_hz
        if self.cfg.allocation == "equal":
            return equal_split(total, ids)
        shares, _ = min_max_latency(
            total,
            {p.job.client_id: p.fixed_s for p in active},
            {p.job.client_id: p.bits_up for p in active},
            snr_hz={c: float(ch.snr_hz_up[c]) for c in ids},
        )
        return shares

    def _fit_deadline(
        self, ch: ChannelState, active: list[_Prep], deadline_s: float
    ) -> tuple[list[_Prep], list[_Prep]]:
        """Drop clients one at a time until the rest meet the deadline; returns (kept, dropped)."""
        kept, late = list(active), []
        total = self.cfg.bandwidth_hz
        limit = deadline_s * (1.0 + _REL_TOL)
        while kept:
            if self.cfg.allocation == "equal":
                share = total / len(kept)
                finish = {
                    p.job.client_id: p.fixed_s + _upload_s(p.bits_up, ch.uplink_rate(p.job.client_id, share))
                    for p in kept
                }
                worst = max(finish, key=lambda c: (finish[c], c))
                if finish[worst] <= limit:
                    break
            else:
                need = bandwidth_needed(
                    total,
                    {p.job.client_id: p.fixed_s for p in kept},
                    {p.job.client_id: p.bits_up for p in kept},
                    deadline_s,
                    snr_hz={p.job.client_id: float(ch.snr_hz_up[p.job.client_id]) for p in kept},
                )
                if sum(need.values()) <= total:
                    break
                worst = max(need, key=lambda c: (need[c], c))
            late.extend(p for p in kept if p.job.client_id == worst)
            kept = [p for p in kept if p.job.client_id != worst]
        return kept, late

    def _served(self, ch: ChannelState, p: _Prep, start_s: float, bandwidth_hz: float) -> ClientTiming:
        c = p.job.client_id
        rate_up = ch.uplink_rate(c, bandwidth_hz)
        upload_s = _upload_s(p.bits_up, rate_up)
        return ClientTiming(
            client_id=c,
            start_s=start_s,
            download_s=p.download_s,
            compute_s=p.compute_s,
            upload_s=upload_s,
            finish_s=start_s + p.download_s + p.compute_s + upload_s,
            rate_up_bps=rate_up,
            rate_down_bps=p.rate_down,
            bandwidth_up_hz=bandwidth_hz,
            energy_tx_j=ch.tx_power_w * upload_s,
            energy_compute_j=p.profile.compute_energy(p.job.flops),
            bytes_up=p.job.bytes_up,
            bytes_down=p.job.bytes_down,
            tx_power_w=ch.tx_power_w,
        )

    def _dropped(self, p: _Prep, start_s: float, rate_up: float, reason: str, at_s: float) -> ClientTiming:
        if reason == "outage":
            download_s = compute_s = energy = 0.0
        else:
            download_s, compute_s = p.download_s, p.compute_s
            worked = min(compute_s, max(0.0, at_s - start_s - download_s))
            energy = p.profile.energy_for_time(worked)
        return ClientTiming(
            client_id=p.job.client_id,
            start_s=start_s,
            download_s=download_s,
            compute_s=compute_s,
            upload_s=0.0,
            finish_s=at_s,
            rate_up_bps=rate_up,
            rate_down_bps=p.rate_down,
            bandwidth_up_hz=0.0,
            energy_tx_j=0.0,
            energy_compute_j=energy,
            bytes_up=0,
            bytes_down=0 if reason == "outage" else p.job.bytes_down,
            dropped=True,
            reason=reason,
        )

    def _solo_times(
        self, round_idx: int, candidates: Sequence[int], k: int, flops: float, nbytes: int,
        analog_slot: float | None = None,
    ) -> dict[int, float]:
        ch = self.channel(round_idx)
        share = self.cfg.bandwidth_hz / k
        out: dict[int, float] = {}
        for c in candidates:
            job = ClientJob(int(c), float(flops), int(nbytes), int(nbytes))
            self._check_jobs([job])
            p = self._prepare(ch, job)
            if analog_slot is not None:  # over the air: one slot whoever else transmits
                out[job.client_id] = math.inf if self._outage(p, math.inf) else p.fixed_s + analog_slot
                continue
            rate_up = ch.uplink_rate(job.client_id, share)
            out[job.client_id] = (
                math.inf if self._outage(p, rate_up) else p.fixed_s + _upload_s(p.bits_up, rate_up)
            )
        return out


def _upload_s(bits: float, rate_bps: float) -> float:
    """Seconds to send ``bits`` at ``rate_bps`` (0 for nothing to send)."""
    if bits <= 0:
        return 0.0
    return bits / rate_bps if rate_bps > 0 else math.inf


def _link_time(nbytes: int, rate_bps: float, latency_s: float) -> float:
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return latency_s + 8.0 * nbytes / rate_bps


def _round_events(
    round_idx: int, timings: dict[int, ClientTiming], end_s: float, aggregated: bool
) -> list[Event]:
    q = EventQueue()
    for c, t in sorted(timings.items()):
        if t.dropped:
            q.push(t.finish_s, clock.CLIENT_DROPPED, {"client_id": c, "reason": t.reason})
            continue
        q.push(t.start_s + t.download_s, clock.DOWNLOAD_DONE, {"client_id": c})
        q.push(t.start_s + t.download_s + t.compute_s, clock.COMPUTE_DONE, {"client_id": c})
        if not t.truncated:
            q.push(t.finish_s, clock.UPLOAD_DONE, {"client_id": c})
    if aggregated:
        q.push(end_s, clock.AGGREGATION_DONE, {"round_idx": round_idx})
    return [q.pop() for _ in range(len(q))]
