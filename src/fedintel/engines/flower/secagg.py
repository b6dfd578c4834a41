"""Secure aggregation on Flower: every SuperNode masks its own update; the ServerApp holds only masked
vectors and the unmasked sum.

fedintel's protocol (:mod:`fedintel.privacy.secagg`, Bonawitz et al., CCS 2017) run over Flower messages, one
session per round, with fresh keys from the operating system's randomness on every node:

1. ``query.secagg_keys``: each selected client makes two X25519 pairs (``c``: sealing shares, ``s``: masks)
   and a self-mask seed, keeps the secrets on its node, and answers with both public keys.
2. ``query.secagg_shares``: the server sends every responder the public keys of all responders and the
   threshold ``t``; each Shamir-shares its ``s`` key and self-mask seed among them and answers with one bundle
   per holder, sealed to that holder (:func:`~fedintel.privacy.secagg.seal_bundle`, AES-256-GCM): the server
   only routes ciphertexts.
3. ``train`` (the normal job): carries the participants (those whose shares went out), their public keys and
   the sealed bundles addressed to this client. The node opens and keeps them, trains, encodes what
   :func:`~fedintel.privacy.secure_aggregator.masking_input` gives (``w * delta`` and ``w``, or the clipped delta under
   central DP) in fixed point exactly as the local simulation does, and uploads only the masked words. A NaN,
   Inf or overflowing delta never leaves the node (the encoder refuses it: that client drops out).
4. ``query.secagg_unmask``: after screening, the accepted updates are the survivors; every other participant
   is dropped (it crashed, timed out, diverged, was rejected or lost on the simulated network). Each survivor
   reveals its shares of the survivors' self-mask seeds and of the dropped clients' keys, never both for one
   client, and then deletes the session's secrets. With ``t`` reveals the server strips the masks.

Since the fixed-point words are those of the simulation and the integer sum mod 2^64 is exact, a run gives
the local engine's numbers to the bit. What the server sees of one client is uniform noise (checked by the
real-SuperNode test with a correlation). Limits: semi-honest server (no consistency-check round), one session
per round of a synchronous scheme (``federation.scheme: fedavg``; the config refuses the others on Flower),
and the node keeps its secrets for one round in a file readable only by its user
(``<cache-dir>/secagg`` or the system temp directory).

``FEDINTEL_SECAGG_AUDIT_DIR``: if set in the ServerApp's environment, every masked vector the server received is
saved there as ``round_<r>_client_<c>.npy`` (what the server held; tests use it).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

log = logging.getLogger(__name__)

KEYS = "query.secagg_keys"
SHARES = "query.secagg_shares"
UNMASK = "query.secagg_unmask"
SECAGG_KEY = "secagg"
"""The ``ConfigRecord`` of a secure-aggregation message (and of a train job under secure aggregation)."""
MASKED_RECORD = "masked"
"""The ``ArrayRecord`` of a masked upload: one uint64 ``Array`` (``words``); ``messages.MASKED_KEY``."""
AUDIT_ENV = "FEDINTEL_SECAGG_AUDIT_DIR"
_STALE_S = 24 * 3600.0


# ------------------------------------------------------------------------------------------ node side


def secret_dir(cache_dir: Path | None) -> Path:
    """Where a node keeps its secrets between the messages of one session (created 0700)."""
    base = cache_dir / "secagg" if cache_dir is not None else Path(tempfile.gettempdir()) / f"fedintel-secagg-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return base


def _secret_path(store: Path, session: str, cid: int) -> Path:
    if not session.isalnum():
        raise ValueError(f"secure aggregation: bad session id {session!r}")
    return store / f"{session}-{cid}.json"


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, Any]:
    from fedintel.privacy.secagg import SecAggError

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SecAggError(f"this node holds no secrets of session {path.stem} ({type(err).__name__}); it was "
                          "restarted or the session was finished") from None


def node_keys(content: RecordDict, store: Path) -> RecordDict:
    """Step 1 on the node: fresh key pairs and self-mask seed; answer with the public keys."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    from fedintel.privacy.secagg import SecAggClient

    rec = content[SECAGG_KEY]
    session, cid, rnd, frac_bits = str(rec["session"]), int(rec["client-id"]), int(rec["round"]), int(rec["frac-bits"])
    now = time.time()
    for old in store.glob("*.json"):  # sessions that never reached unmasking (a server that died mid-round)
        if now - old.stat().st_mtime > _STALE_S:
            old.unlink(missing_ok=True)
    client = SecAggClient(cid, rnd, frac_bits=frac_bits)
    c_sk = X25519PrivateKey.generate()
    c_pk = c_sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    _save(_secret_path(store, session, cid), {
        "client": client.to_dict(), "c_sk": c_sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex(),
        "c_pk": c_pk.hex(), "s_pk": client.public_key.hex()})
    return RecordDict({SECAGG_KEY: ConfigRecord({"client-id": cid, "c-pk": c_pk, "s-pk": client.public_key})})


def node_shares(content: RecordDict, store: Path) -> RecordDict:
    """Step 2 on the node: Shamir-share the mask key and self-mask seed, each bundle sealed to its holder."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedintel.privacy.secagg import SecAggClient, SecAggError, seal_bundle

    rec = content[SECAGG_KEY]
    session, cid, rnd = str(rec["session"]), int(rec["client-id"]), int(rec["round"])
    ids = [int(i) for i in rec["participants"]]
    c_pks = dict(zip(ids, [bytes(b) for b in rec["c-pks"]], strict=True))
    s_pks = dict(zip(ids, [bytes(b) for b in rec["s-pks"]], strict=True))
    path = _secret_path(store, session, cid)
    saved = _load(path)
    if c_pks.get(cid, b"").hex() != saved["c_pk"] or s_pks.get(cid, b"").hex() != saved["s_pk"]:
        raise SecAggError(f"client {cid}: the server's key list does not hold this client's own keys")
    if "peers" in saved:
        raise SecAggError(f"client {cid}: shares of session {session} were already made")
    client = SecAggClient.from_dict(saved["client"])
    bundles = client.make_shares(ids, int(rec["threshold"]))
    c_sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(saved["c_sk"]))
    sealed = [seal_bundle(bundles[j], c_sk, c_pks[j], session, rnd) for j in ids]
    saved.update(client=client.to_dict(), peers={str(j): [c_pks[j].hex(), s_pks[j].hex()] for j in ids})
    _save(path, saved)
    return RecordDict({SECAGG_KEY: ConfigRecord({"client-id": cid, "holders": ids, "sealed": sealed})})


def node_mask(job_rec: ConfigRecord, values: Any, store: Path) -> ArrayRecord:
    """Step 3 on the node: open the bundles addressed to this client, then mask ``values`` (an adapter state
    from :func:`~fedintel.privacy.secure_aggregator.masking_input`) against the participants. Only the words leave."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedintel.privacy.secagg import SecAggClient, SecAggError, open_bundle

    session, cid, rnd = str(job_rec["session"]), int(job_rec["client-id"]), int(job_rec["round"])
    path = _secret_path(store, session, cid)
    saved = _load(path)
    peers = {int(j): (bytes.fromhex(c), bytes.fromhex(s)) for j, (c, s) in saved.get("peers", {}).items()}
    ids = [int(i) for i in job_rec["participants"]]
    if not peers or not set(ids) <= set(peers) or cid not in ids:
        raise SecAggError(f"client {cid}: participants {ids} are not among those it shared its secrets with")
    owners = [int(o) for o in job_rec["share-owners"]]
    if sorted(owners) != sorted(ids):
        raise SecAggError(f"client {cid}: got shares from {sorted(owners)}, expected one from each of {sorted(ids)}")
    c_sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(saved["c_sk"]))
    client = SecAggClient.from_dict(saved["client"])
    client.receive_shares(open_bundle(bytes(ct), c_sk, peers[o][0], session, rnd, o, cid)
                          for o, ct in zip(owners, job_rec["shares"], strict=True))
    client.restrict(ids)
    masked = client.masked_update(values, {j: peers[j][1] for j in ids})
    saved["client"] = client.to_dict()
    saved["masked"] = True
    _save(path, saved)
    return ArrayRecord({"words": Array(np.ascontiguousarray(masked.words))})


def node_unmask(content: RecordDict, store: Path) -> RecordDict:
    """Step 4 on the node: reveal (self-mask shares of survivors, key shares of the dropped), then forget."""
    from fedintel.privacy.secagg import SecAggClient, SecAggError, reveal_to_json

    rec = content[SECAGG_KEY]
    session, cid = str(rec["session"]), int(rec["client-id"])
    path = _secret_path(store, session, cid)
    saved = _load(path)
    if not saved.get("masked"):
        raise SecAggError(f"client {cid} uploaded no masked update in session {session} and must not reveal")
    survivors, dropped = [int(i) for i in rec["survivors"] if i >= 0], [int(i) for i in rec["dropped"] if i >= 0]
    client = SecAggClient.from_dict(saved["client"])
    if set(survivors) | set(dropped) != client._participants:  # noqa: SLF001 - the node's own client
        raise SecAggError(f"client {cid}: survivors and dropped do not cover the session's participants")
    reveal = client.reveal(survivors, dropped)
    path.unlink(missing_ok=True)  # one reveal per session: a second request finds nothing
    return RecordDict({SECAGG_KEY: ConfigRecord({"client-id": cid, "reveal": reveal_to_json(reveal)})})


# ---------------------------------------------------------------------------------------- server side

Exchange = Callable[[dict[int, tuple[str, RecordDict]], float], dict[int, Message | str]]
"""``(client id -> (message type, content), timeout s) -> client id -> reply, or why there is none``: sends
each message to the node hosting the client and waits up to ``timeout`` seconds for all replies."""


@dataclass
class Session:
    """One round's protocol state on the server: only public keys and routing."""

    session: str
    round_idx: int
    threshold: int
    participants: list[int]
    s_pks: dict[int, bytes]
    records: dict[int, ConfigRecord] = field(default_factory=dict)
    """The ``secagg`` record of each participant's train job."""


class SecAggCoordinator:
    """The ServerApp's side of secure aggregation: drives steps 1, 2 and 4 over ``exchange``.

    ``frac_bits`` and ``threshold`` (``None``: a majority) come from the ``privacy`` section.
    """

    def __init__(self, exchange: Exchange, *, frac_bits: int, threshold: int | None, timeout: float) -> None:
        self.exchange = exchange
        self.frac_bits = frac_bits
        self.threshold = threshold
        self.timeout = timeout
        self.sessions: dict[int, Session] = {}

    def setup(self, round_idx: int, client_ids: Sequence[int]) -> tuple[Session | None, dict[int, str]]:
        """Steps 1-2 with ``client_ids``; returns the session and, per client that cannot take part, why."""
        from fedintel.privacy.secagg import default_threshold

        session = secrets.token_hex(16)
        failed: dict[int, str] = {}
        base = {"session": session, "round": int(round_idx), "frac-bits": int(self.frac_bits)}
        msgs = {c: _message(KEYS, {**base, "client-id": int(c)}) for c in client_ids}
        keys: dict[int, tuple[bytes, bytes]] = {}
        for cid, reply in self.exchange(msgs, self.timeout).items():
            try:
                rec = _record(reply, cid)
                keys[cid] = (_key(rec, "c-pk"), _key(rec, "s-pk"))
            except ValueError as err:
                failed[cid] = f"secure aggregation, key advertisement: {err}"
        ids = sorted(keys)
        t = self.threshold or default_threshold(len(ids))
        if len(ids) < max(2, t):
            return None, self._fail_all(client_ids, failed, f"only {len(ids)} clients advertised keys, "
                                        f"secure aggregation needs {max(2, t)}")
        share_base = {**base, "threshold": int(t), "participants": ids, "c-pks": [keys[i][0] for i in ids],
                      "s-pks": [keys[i][1] for i in ids]}
        msgs = {c: _message(SHARES, {**share_base, "client-id": int(c)}) for c in ids}
        sealed: dict[int, dict[int, bytes]] = {}
        for cid, reply in self.exchange(msgs, self.timeout).items():
            try:
                rec = _record(reply, cid)
                holders = [int(h) for h in rec["holders"]]
                cts = [bytes(b) for b in rec["sealed"]]
                if holders != ids or len(cts) != len(ids):
                    raise ValueError(f"bundles for {holders}, expected one for each of {ids}")
                sealed[cid] = dict(zip(holders, cts, strict=True))
            except (ValueError, KeyError, TypeError) as err:
                failed[cid] = f"secure aggregation, share exchange: {err}"
        members = sorted(sealed)
        if len(members) < t:
            return None, self._fail_all(client_ids, failed, f"only {len(members)} clients shared their secrets, "
                                        f"below the threshold {t}")
        s = Session(session, round_idx, t, members, {i: keys[i][1] for i in members})
        for j in members:  # route each sealed bundle to its holder; the server cannot open them
            s.records[j] = ConfigRecord({**base, "client-id": int(j), "participants": members,
                                         "share-owners": members, "shares": [sealed[i][j] for i in members]})
        for cid in client_ids:
            if cid not in members and cid not in failed:
                failed[cid] = "secure aggregation: no answer during the key set-up"
        self.sessions[round_idx] = s
        log.info("secure aggregation round %d: %d participants, threshold %d", round_idx, len(members), t)
        return s, failed

    @staticmethod
    def _fail_all(client_ids: Sequence[int], failed: dict[int, str], why: str) -> dict[int, str]:
        log.warning("secure aggregation: %s; the round's clients fail", why)
        return {c: failed.get(c, f"secure aggregation: {why}") for c in client_ids}

    def unmask(self, round_idx: int, words: Mapping[int, np.ndarray], template: Any) -> Any:
        """Step 4: the unmasked sum of the survivors' ``words`` (client id -> uint64 vector), decoded into
        ``template``'s layout. Raises :class:`~fedintel.privacy.secagg.SecAggError` below the threshold."""
        from fedintel.privacy.secagg import (
            MaskedUpdate,
            SecAggError,
            SecAggServer,
            layout_of,
            reveal_from_json,
        )

        s = self.sessions.pop(round_idx, None)
        if s is None:
            raise SecAggError(f"round {round_idx}: no secure-aggregation session (masked updates from nowhere)")
        survivors = sorted(words)
        if not set(survivors) <= set(s.participants):
            raise SecAggError(f"round {round_idx}: masked updates from {sorted(set(survivors) - set(s.participants))}, "
                              "which are not participants")
        dropped = sorted(set(s.participants) - set(survivors))
        layout = layout_of(template)
        n = sum(int(np.prod(shape)) for _, shape, _ in layout)
        bad = [c for c in survivors if words[c].size != n]
        if bad:
            raise SecAggError(f"round {round_idx}: masked updates of clients {bad} do not have {n} words")
        audit = os.environ.get(AUDIT_ENV)
        if audit:
            Path(audit).mkdir(parents=True, exist_ok=True)
            for c in survivors:
                np.save(Path(audit) / f"round_{round_idx}_client_{c}.npy", words[c])
        base = {"session": s.session, "round": int(round_idx), "survivors": survivors, "dropped": dropped or [-1]}
        msgs = {c: _message(UNMASK, {**base, "client-id": int(c)}) for c in survivors}
        reveals = []
        for cid, reply in self.exchange(msgs, self.timeout).items():
            try:
                reveal = reveal_from_json(str(_record(reply, cid)["reveal"]))
                if reveal.holder != cid:
                    raise ValueError(f"reveal of client {reveal.holder}")
                reveals.append(reveal)
            except (ValueError, KeyError) as err:
                log.warning("secure aggregation round %d: client %d revealed nothing usable: %s", round_idx, cid, err)
        log.info("secure aggregation round %d: %d survivors, %d dropped, %d reveals", round_idx, len(survivors),
                 len(dropped), len(reveals))
        masked = [MaskedUpdate(c, words[c], layout) for c in survivors]
        return SecAggServer(round_idx, s.threshold, frac_bits=self.frac_bits).unmask(masked, reveals, s.s_pks)


def _message(message_type: str, fields: dict[str, Any]) -> tuple[str, RecordDict]:
    return message_type, RecordDict({SECAGG_KEY: ConfigRecord(fields)})


def _record(reply: Message | str, cid: int) -> ConfigRecord:
    if isinstance(reply, str):
        raise ValueError(reply)
    if reply.has_error():
        raise ValueError(reply.error.reason)
    rec = reply.content.get(SECAGG_KEY)
    if not isinstance(rec, ConfigRecord) or int(rec.get("client-id", -1)) != cid:
        raise ValueError(f"the reply for client {cid} has no secure-aggregation record of its own")
    return rec


def _key(rec: ConfigRecord, name: str) -> bytes:
    v = rec.get(name)
    if not isinstance(v, bytes) or len(v) != 32:
        raise ValueError(f"{name} is not a 32-byte X25519 public key")
    return v
