"""Secure aggregation: the server learns the sum of client deltas, not any single delta.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", ACM CCS 2017 (the semi-honest protocol with double masking).

One protocol run per round, with fresh keys (make new :class:`SecAggClient` objects every round):

1. *Advertise keys.* Each client ``i`` makes an X25519 key pair and publishes the public key.
2. *Share secrets.* Client ``i`` draws a self-mask seed ``b_i`` and splits both ``b_i`` and its X25519 private
   key into ``t``-out-of-``n`` Shamir shares over the prime field ``GF(2^521 - 1)``, one per participant.
3. *Masked input.* Every pair ``(i, j)`` derives the same seed ``s_ij = HKDF-SHA256(X25519(sk_i, pk_j))``
   (bound to the round and the pair). Client ``i`` encodes its delta in fixed point as integers mod
   ``2^64`` and uploads ``y_i = enc(x_i) + PRG(b_i) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)``. The PRG is
   the ChaCha20 keystream, so ``y_i`` is computationally indistinguishable from uniform noise.
4. *Unmask.* The clients whose ``y_i`` arrived are the survivors. Each survivor reveals, for every
   participant, *either* its share of ``b`` (if that participant survived) *or* its share of the private key
   (if it dropped), never both. With at least ``t`` reveals the server rebuilds every survivor's ``b_i`` and
   every dropped client's key, strips the self masks and the dropped clients' dangling pairwise masks, and
   the survivors' pairwise masks cancel in the sum. Arithmetic is mod ``2^64``, so cancellation is exact.

Fixed-point encoding: ``enc(x) = round(x * 2^frac_bits)`` as a two's-complement 64-bit integer. The decoded
sum differs from the exact real sum of the float inputs by at most ``n * 2^-(frac_bits + 1)`` per coordinate
(each input rounds once; the integer sum is exact), about ``1.2e-10 * n`` at the default ``frac_bits = 32``.
No overflow is possible while every ``|x| < 2^(63 - frac_bits) / n``; a larger value is refused with an error.

Limits of this implementation (state them when you quote results):

* Two ways to run it. :func:`secure_sum` / :func:`secure_mean` run every party in one process: a simulation
  (the local engine), where the shares of step 2 go to their holders directly. On ``engine: flower``
  (:mod:`fedintel.engines.flower.secagg`) each SuperNode runs its own :class:`SecAggClient`, the shares travel
  through the server encrypted and authenticated to their holder (a second X25519 pair per client,
  :func:`seal_bundle`: AES-256-GCM bound to the session, round and both ids), and the server only ever holds
  masked vectors and the unmasked sum. Client identities are those Flower's node authentication gives; no PKI
  signs the advertised keys.
* Semi-honest security: the server and up to ``t - 1`` colluding clients learn nothing beyond the sum of the
  survivors, provided the server follows the protocol. A malicious server could send different survivor sets
  to different clients; Bonawitz et al.'s consistency-check round against that is not implemented.
* No integrity: a tampered or corrupted masked vector silently changes the sum (tests check it does change).
  Pair secure aggregation with robust aggregation only through norm checks done *before* masking, since the
  server cannot inspect individual updates.
* At least 2 participants and ``t`` survivors are needed; with exactly one survivor the "sum" is its update.
* ``seed`` makes the keys and masks reproducible for the simulator; it also makes them predictable to anyone
  who knows the seed. Leave it ``None`` for real randomness from the OS.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fedintel.errors import FedintelError
from fedintel.types import AdapterState, Update

FIELD_PRIME = 2**521 - 1
"""The Mersenne prime of the Shamir field; holds any 32-byte secret."""

_MOD_BITS = 64
_DOMAIN = b"fedintel-secagg-v1"


class SecAggError(FedintelError, RuntimeError):
    """The protocol cannot continue (too few survivors, inconsistent requests, bad shares)."""


# --------------------------------------------------------------------------------------------- Shamir


@dataclass(frozen=True)
class Share:
    """One Shamir share: the polynomial evaluated at ``x`` (``x >= 1``)."""

    x: int
    y: int


class _Random:
    """Random field elements and bytes: from the OS, or (``seed`` given) a SHA-256 counter stream."""

    def __init__(self, seed: bytes | None) -> None:
        self._seed = seed
        self._counter = 0

    def bytes(self, n: int) -> bytes:
        if self._seed is None:
            return os.urandom(n)
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:n]

    def below(self, p: int) -> int:
        if self._seed is None:
            return secrets.randbelow(p)
        nbytes = (p.bit_length() + 7) // 8
        mask = (1 << p.bit_length()) - 1
        while True:
            v = int.from_bytes(self.bytes(nbytes), "big") & mask
            if v < p:
                return v


def shamir_split(secret: int, xs: Sequence[int], threshold: int, rand: _Random | None = None) -> list[Share]:
    """Split ``secret`` (``0 <= secret < FIELD_PRIME``) into shares at points ``xs``; any ``threshold`` of
    them rebuild it, fewer reveal nothing."""
    if not 0 <= secret < FIELD_PRIME:
        raise ValueError("secret out of the field")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    if len(set(xs)) != len(xs) or any(x <= 0 or x >= FIELD_PRIME for x in xs):
        raise ValueError("share points must be distinct and in [1, p)")
    rand = rand or _Random(None)
    coeffs = [secret] + [rand.below(FIELD_PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % FIELD_PRIME
        shares.append(Share(x, y))
    return shares


def shamir_reconstruct(shares: Sequence[Share]) -> int:
    """Lagrange interpolation at 0 of ``shares`` (pass at least the threshold; extra shares are fine)."""
    if not shares:
        raise SecAggError("no shares to reconstruct from")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise SecAggError("duplicate share points")
    secret = 0
    for i, si in enumerate(shares):
        num, den = 1, 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (-sj.x) % FIELD_PRIME
                den = den * (si.x - sj.x) % FIELD_PRIME
        secret = (secret + si.y * num * pow(den, -1, FIELD_PRIME)) % FIELD_PRIME
    return secret


# ------------------------------------------------------------------------------------ masks and encoding


def prg(key: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 words: the ChaCha20 keystream of the 32-byte ``key`` (zero nonce; each key
    is used for one vector only)."""
    enc = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\x00" * (8 * n)), dtype="<u8").astype(np.uint64, copy=False)


def pair_seed(shared_secret: bytes, round_idx: int, a: int, b: int) -> bytes:
    """32-byte mask seed of the unordered pair ``{a, b}`` in ``round_idx`` from their X25519 shared secret."""
    lo, hi = min(a, b), max(a, b)
    info = _DOMAIN + b"|pair|" + struct.pack(">qqq", round_idx, lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def _self_key(b_seed: bytes, round_idx: int, client_id: int) -> bytes:
    info = _DOMAIN + b"|self|" + struct.pack(">qq", round_idx, client_id)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(b_seed)


Layout = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]


def _layout(delta: AdapterState) -> Layout:
    return tuple((k, tuple(delta[k].shape), delta[k].dtype) for k in sorted(delta))


def encode_fixed_point(delta: AdapterState, frac_bits: int, num_clients: int) -> np.ndarray:
    """Flatten ``delta`` (sorted keys) to uint64 words ``round(x * 2^frac_bits) mod 2^64``.

    Raises ``ValueError`` if a value is non-finite or so large that a sum over ``num_clients`` could
    overflow.
    """
    flat = np.concatenate(
        [delta[k].detach().cpu().to(torch.float64).reshape(-1).numpy() for k in sorted(delta)]
    )
    if not np.all(np.isfinite(flat)):
        raise ValueError("secure aggregation: the delta holds NaN or Inf")
    limit = 2.0 ** (_MOD_BITS - 1 - frac_bits) / max(1, num_clients)
    peak = float(np.max(np.abs(flat))) if flat.size else 0.0
    if peak >= limit:
        raise ValueError(
            f"secure aggregation: |value| {peak:.3g} would overflow the fixed-point sum of {num_clients} "
            f"clients (limit {limit:.3g}); clip the updates or lower privacy.secagg_frac_bits"
        )
    return np.rint(flat * 2.0**frac_bits).astype(np.int64).view(np.uint64)


def decode_fixed_point(words: np.ndarray, frac_bits: int, layout: Layout) -> AdapterState:
    """Inverse of :func:`encode_fixed_point` (two's complement), one tensor per layout entry."""
    values = words.view(np.int64).astype(np.float64) / 2.0**frac_bits
    out: AdapterState = {}
    pos = 0
    for key, shape, dtype in layout:
        n = math.prod(shape)
        out[key] = torch.from_numpy(values[pos : pos + n].copy()).reshape(shape).to(dtype)
        pos += n
    return out


# ------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class ShareBundle:
    """What ``owner`` hands to ``holder`` in step 2: one share of each of its two secrets."""

    owner: int
    holder: int
    key_share: Share
    self_share: Share


@dataclass(frozen=True)
class MaskedUpdate:
    """Step 3 upload: the masked fixed-point words and the (public) tensor layout."""

    client_id: int
    words: np.ndarray
    layout: Layout


@dataclass(frozen=True)
class Reveal:
    """Step 4: the shares one survivor discloses. Never both kinds for the same owner."""

    holder: int
    self_shares: dict[int, Share] = field(default_factory=dict)
    key_shares: dict[int, Share] = field(default_factory=dict)


def _bundle_to_dict(b: ShareBundle) -> dict[str, object]:
    return {"owner": b.owner, "holder": b.holder, "key": [b.key_share.x, hex(b.key_share.y)],
            "self": [b.self_share.x, hex(b.self_share.y)]}


def _bundle_from_dict(d: Mapping[str, object]) -> ShareBundle:
    k, s = d["key"], d["self"]
    return ShareBundle(int(d["owner"]), int(d["holder"]), Share(int(k[0]), int(k[1], 16)),  # type: ignore[index,call-overload]
                       Share(int(s[0]), int(s[1], 16)))  # type: ignore[index,call-overload]


def reveal_to_json(r: Reveal) -> str:
    """A :class:`Reveal` as JSON (for the unmasking message)."""
    return json.dumps({"holder": r.holder, "self": {str(o): [s.x, hex(s.y)] for o, s in r.self_shares.items()},
                       "key": {str(o): [s.x, hex(s.y)] for o, s in r.key_shares.items()}})


def reveal_from_json(text: str) -> Reveal:
    """The inverse of :func:`reveal_to_json`; :class:`SecAggError` if malformed."""
    try:
        d = json.loads(text)
        return Reveal(int(d["holder"]),
                      self_shares={int(o): Share(int(v[0]), int(v[1], 16)) for o, v in d["self"].items()},
                      key_shares={int(o): Share(int(v[0]), int(v[1], 16)) for o, v in d["key"].items()})
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise SecAggError(f"malformed reveal ({type(err).__name__}: {err})") from None


def _seal_key(own: X25519PrivateKey, peer_public: bytes, context: bytes) -> bytes:
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DOMAIN + b"|seal|" + context).derive(shared)


def _seal_context(session: str, round_idx: int, owner: int, holder: int) -> bytes:
    return session.encode() + struct.pack(">qqq", round_idx, owner, holder)


def seal_bundle(bundle: ShareBundle, own_key: X25519PrivateKey, holder_public: bytes, session: str,
                round_idx: int) -> bytes:
    """``bundle`` encrypted and authenticated for its holder (AES-256-GCM under an X25519 key between the
    owner's and the holder's *encryption* key pairs, bound to ``session``, the round and both ids), so the
    server that routes it learns nothing from it and cannot swap it. ``nonce || ciphertext``."""
    ctx = _seal_context(session, round_idx, bundle.owner, bundle.holder)
    nonce = os.urandom(12)
    plain = json.dumps(_bundle_to_dict(bundle)).encode()
    return nonce + AESGCM(_seal_key(own_key, holder_public, ctx)).encrypt(nonce, plain, ctx)


def open_bundle(sealed: bytes, own_key: X25519PrivateKey, owner_public: bytes, session: str, round_idx: int,
                owner: int, holder: int) -> ShareBundle:
    """The bundle :func:`seal_bundle` sealed for ``holder`` by ``owner``; :class:`SecAggError` if it was
    tampered with, sealed for someone else or for another session or round."""
    ctx = _seal_context(session, round_idx, owner, holder)
    try:
        plain = AESGCM(_seal_key(own_key, owner_public, ctx)).decrypt(sealed[:12], sealed[12:], ctx)
    except (InvalidTag, ValueError) as err:
        raise SecAggError(f"the share bundle from client {owner} does not open (tampered or misrouted)") from err
    b = _bundle_from_dict(json.loads(plain))
    if (b.owner, b.holder) != (owner, holder):
        raise SecAggError(f"the share bundle from client {owner} names owner {b.owner} and holder {b.holder}")
    return b


# ------------------------------------------------------------------------------------------- parties


def _seed_bytes(seed: int | None, round_idx: int, client_id: int, what: str) -> bytes | None:
    if seed is None:
        return None
    return hashlib.sha256(f"fedintel-secagg|{seed}|{round_idx}|{client_id}|{what}".encode()).digest()


class SecAggClient:
    """One client's side of one round of secure aggregation.

    Args:
        client_id: non-negative id, unique among the participants.
        round_idx: the round; bound into every mask so masks never repeat across rounds.
        frac_bits: fixed-point fractional bits (quantisation step ``2^-frac_bits``); same for all parties.
        seed: reproducible keys and masks for simulation (see the module docstring); ``None``: OS randomness.
    """

    def __init__(
        self, client_id: int, round_idx: int, *, frac_bits: int = 32, seed: int | None = None
    ) -> None:
        if client_id < 0:
            raise ValueError(f"client_id must be >= 0, got {client_id}")
        if not 8 <= frac_bits <= 48:
            raise ValueError(f"privacy.secagg_frac_bits must be in [8, 48], got {frac_bits}")
        self.client_id = client_id
        self.round_idx = round_idx
        self.frac_bits = frac_bits
        key_seed = _seed_bytes(seed, round_idx, client_id, "key")
        self._sk = X25519PrivateKey.from_private_bytes(key_seed) if key_seed else X25519PrivateKey.generate()
        self._b = _Random(_seed_bytes(seed, round_idx, client_id, "self")).bytes(32)
        self._rand = _Random(_seed_bytes(seed, round_idx, client_id, "shamir"))
        self._held: dict[int, ShareBundle] = {}
        self._threshold: int | None = None
        self._participants: frozenset[int] = frozenset()
        self._revealed: dict[int, str] = {}

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte X25519 public key (step 1)."""
        return self._sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def make_shares(self, participants: Collection[int], threshold: int) -> dict[int, ShareBundle]:
        """Step 2: Shamir-share the private key and the self-mask seed among ``participants`` (self included).

        Returns one bundle per participant id, to be delivered to that participant.
        """
        ids = sorted(set(participants))
        if self.client_id not in ids:
            raise SecAggError(f"client {self.client_id} is not among the participants")
        if not 2 <= threshold <= len(ids):
            raise SecAggError(f"secagg threshold must be in [2, {len(ids)}], got {threshold}")
        self._threshold = threshold
        self._participants = frozenset(ids)
        xs = [i + 1 for i in ids]
        sk_raw = self._sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        key_shares = shamir_split(int.from_bytes(sk_raw, "big"), xs, threshold, self._rand)
        self_shares = shamir_split(int.from_bytes(self._b, "big"), xs, threshold, self._rand)
        return {
            i: ShareBundle(self.client_id, i, ks, ss)
            for i, ks, ss in zip(ids, key_shares, self_shares, strict=True)
        }

    def receive_shares(self, bundles: Iterable[ShareBundle]) -> None:
        """Step 2, receiving side: keep the bundles addressed to this client."""
        for b in bundles:
            if b.holder != self.client_id:
                raise SecAggError(f"bundle for client {b.holder} delivered to client {self.client_id}")
            self._held[b.owner] = b

    def masked_update(self, delta: AdapterState, peer_public_keys: Mapping[int, bytes]) -> MaskedUpdate:
        """Step 3: ``enc(delta) + PRG(b_i) +/- PRG(s_ij)`` for every peer ``j`` (mod 2^64).

        ``peer_public_keys`` maps every participant id (this client's own entry is ignored) to its key.
        """
        peers = {j: pk for j, pk in peer_public_keys.items() if j != self.client_id}
        if not peers:
            raise SecAggError("secure aggregation needs at least 2 participants")
        if self._participants and set(peers) | {self.client_id} != self._participants:
            raise SecAggError("the peer keys do not match the participants the secrets were shared with")
        words = encode_fixed_point(delta, self.frac_bits, len(peers) + 1)
        n = words.size
        with np.errstate(over="ignore"):
            words = words + prg(_self_key(self._b, self.round_idx, self.client_id), n)
            for j in sorted(peers):
                shared = self._sk.exchange(X25519PublicKey.from_public_bytes(peers[j]))
                mask = prg(pair_seed(shared, self.round_idx, self.client_id, j), n)
                words = words + mask if self.client_id < j else words - mask
        return MaskedUpdate(self.client_id, words, _layout(delta))

    def restrict(self, participants: Collection[int]) -> None:
        """Mask against ``participants`` only: the clients whose shares reached this one (a subset, with self,
        of those the secrets were shared among). Who shared but whose shares never arrived takes no part."""
        ids = frozenset(participants)
        if self.client_id not in ids or not ids <= self._participants:
            raise SecAggError(f"client {self.client_id}: participants {sorted(ids)} are not a subset (with itself) of "
                              f"those it shared its secrets with {sorted(self._participants)}")
        if self._threshold is None or len(ids) < self._threshold:
            raise SecAggError(f"only {len(ids)} participants, below the threshold {self._threshold}")
        self._participants = ids

    def to_dict(self) -> dict[str, object]:
        """This client's secrets and progress as JSON-able values, to keep between the protocol's messages
        (a deployed client runs one process per message). Secret: store it where only the client can read it."""
        sk = self._sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {
            "client_id": self.client_id, "round_idx": self.round_idx, "frac_bits": self.frac_bits,
            "sk": sk.hex(), "b": self._b.hex(), "threshold": self._threshold,
            "participants": sorted(self._participants), "revealed": {str(k): v for k, v in self._revealed.items()},
            "held": {str(o): _bundle_to_dict(b) for o, b in self._held.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> SecAggClient:
        """The client :meth:`to_dict` saved."""
        self = cls.__new__(cls)
        self.client_id = int(d["client_id"])  # type: ignore[call-overload]
        self.round_idx = int(d["round_idx"])  # type: ignore[call-overload]
        self.frac_bits = int(d["frac_bits"])  # type: ignore[call-overload]
        self._sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(str(d["sk"])))
        self._b = bytes.fromhex(str(d["b"]))
        self._rand = _Random(None)
        self._threshold = None if d["threshold"] is None else int(d["threshold"])  # type: ignore[call-overload]
        self._participants = frozenset(int(i) for i in d["participants"])  # type: ignore[attr-defined]
        self._revealed = {int(k): str(v) for k, v in dict(d["revealed"]).items()}  # type: ignore[call-overload]
        self._held = {int(o): _bundle_from_dict(b) for o, b in dict(d["held"]).items()}  # type: ignore[call-overload]
        return self

    def reveal(self, survivors: Collection[int], dropped: Collection[int]) -> Reveal:
        """Step 4: self-mask shares of ``survivors`` and key shares of ``dropped``; refuses anything unsafe."""
        surv, drop = set(survivors), set(dropped)
        if self._threshold is None:
            raise SecAggError("reveal before make_shares")
        if surv & drop:
            raise SecAggError(f"clients {sorted(surv & drop)} listed both as survivors and as dropped")
        if len(surv) < self._threshold:
            raise SecAggError(f"only {len(surv)} survivors, below the threshold {self._threshold}")
        if self.client_id not in surv:
            raise SecAggError(f"client {self.client_id} is not a survivor and must not reveal")
        for owner, kind in [(o, "self") for o in surv] + [(o, "key") for o in drop]:
            if self._revealed.get(owner, kind) != kind:
                raise SecAggError(f"client {owner}: asked for both its key share and its self-mask share")
        missing = (surv | drop) - set(self._held)
        if missing:
            raise SecAggError(f"client {self.client_id} holds no shares from {sorted(missing)}")
        for o in surv:
            self._revealed[o] = "self"
        for o in drop:
            self._revealed[o] = "key"
        return Reveal(
            self.client_id,
            self_shares={o: self._held[o].self_share for o in sorted(surv)},
            key_shares={o: self._held[o].key_share for o in sorted(drop)},
        )


class SecAggServer:
    """The server's side of one round: sums masked updates and strips the masks.

    Args:
        round_idx: must match the clients'.
        threshold: ``t``; at least this many reveals are needed (and at least this many survivors).
        frac_bits: must match the clients'.
    """

    def __init__(self, round_idx: int, threshold: int, *, frac_bits: int = 32) -> None:
        if threshold < 2:
            raise ValueError(f"privacy.secagg_threshold must be >= 2, got {threshold}")
        self.round_idx = round_idx
        self.threshold = threshold
        self.frac_bits = frac_bits

    def unmask(
        self,
        masked_updates: Sequence[MaskedUpdate],
        reveals: Sequence[Reveal],
        public_keys: Mapping[int, bytes],
    ) -> AdapterState:
        """The sum of the survivors' deltas (survivors: the senders of ``masked_updates``).

        ``public_keys`` lists every participant of step 1-2; those without a masked update count as dropped.
        """
        survivors = [m.client_id for m in masked_updates]
        if len(set(survivors)) != len(survivors):
            raise SecAggError("two masked updates from the same client")
        if not set(survivors) <= set(public_keys):
            raise SecAggError("masked update from a client that advertised no key")
        dropped = sorted(set(public_keys) - set(survivors))
        if len(survivors) < self.threshold:
            raise SecAggError(f"only {len(survivors)} survivors, below the threshold {self.threshold}")
        if len(reveals) < self.threshold:
            raise SecAggError(f"only {len(reveals)} reveals, below the threshold {self.threshold}")
        layout = masked_updates[0].layout
        if any(m.layout != layout for m in masked_updates):
            raise SecAggError("masked updates disagree on the tensor layout")
        n = masked_updates[0].words.size

        def rebuild(owner: int, kind: str) -> bytes:
            shares = [(r.self_shares if kind == "self" else r.key_shares).get(owner) for r in reveals]
            got = [s for s in shares if s is not None]
            if len(got) < self.threshold:
                raise SecAggError(f"only {len(got)} {kind} shares for client {owner}, need {self.threshold}")
            value = shamir_reconstruct(got[: self.threshold])
            if value >= 2**256:
                raise SecAggError(f"client {owner}: reconstructed {kind} secret is not 32 bytes (bad shares)")
            return value.to_bytes(32, "big")

        total = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for m in masked_updates:
                total = total + m.words
            for i in survivors:
                total = total - prg(_self_key(rebuild(i, "self"), self.round_idx, i), n)
            for j in dropped:
                sk_j = X25519PrivateKey.from_private_bytes(rebuild(j, "key"))
                if sk_j.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != public_keys[j]:
                    raise SecAggError(
                        f"client {j}: reconstructed key does not match its public key (bad shares)"
                    )
                for i in survivors:
                    shared = sk_j.exchange(X25519PublicKey.from_public_bytes(public_keys[i]))
                    mask = prg(pair_seed(shared, self.round_idx, i, j), n)
                    # survivor i added +mask if i < j, else -mask; take it back out
                    total = total - mask if i < j else total + mask
        return decode_fixed_point(total, self.frac_bits, layout)


# ---------------------------------------------------------------------------------- in-process helper


def default_threshold(num_participants: int) -> int:
    """``floor(n / 2) + 1``, at least 2: a majority must survive, and a minority coalition learns nothing."""
    return max(2, num_participants // 2 + 1)


def _run(
    deltas: Mapping[int, AdapterState],
    round_idx: int,
    seed: int | None,
    dropped_ids: Iterable[int],
    threshold: int | None,
    frac_bits: int,
) -> AdapterState:
    dropped = sorted(set(dropped_ids))
    if set(dropped) & set(deltas):
        raise ValueError(f"clients {sorted(set(dropped) & set(deltas))} are both updates and dropped")
    ids = sorted(set(deltas) | set(dropped))
    if len(ids) < 2:
        raise ValueError("secure aggregation needs at least 2 participants (one client alone is its own sum)")
    t = threshold if threshold is not None else default_threshold(len(ids))
    if len(deltas) < t:
        raise SecAggError(f"only {len(deltas)} of {len(ids)} clients survived, below the threshold {t}")
    clients = {i: SecAggClient(i, round_idx, frac_bits=frac_bits, seed=seed) for i in ids}
    keys = {i: c.public_key for i, c in clients.items()}
    bundles = [b for c in clients.values() for b in c.make_shares(ids, t).values()]
    for i, c in clients.items():
        c.receive_shares(b for b in bundles if b.holder == i)
    masked = [clients[i].masked_update(deltas[i], keys) for i in sorted(deltas)]
    survivors = [m.client_id for m in masked]
    reveals = [clients[i].reveal(survivors, dropped) for i in survivors]
    return SecAggServer(round_idx, t, frac_bits=frac_bits).unmask(masked, reveals, keys)


def secure_sum(
    updates: Sequence[Update],
    round_idx: int,
    seed: int | None = None,
    *,
    dropped_ids: Iterable[int] = (),
    threshold: int | None = None,
    frac_bits: int = 32,
) -> AdapterState:
    """Run the whole protocol in process and return ``sum_i update_i.delta`` over ``updates``.

    ``dropped_ids`` are clients that took part in steps 1-2 but never uploaded (their masks are recovered);
    ``threshold`` defaults to :func:`default_threshold` of all participants. Each tensor keeps its dtype; the
    error against the exact sum is at most ``len(updates) * 2^-(frac_bits+1)`` per coordinate before that cast.
    """
    deltas = {u.client_id: u.delta for u in updates}
    if len(deltas) != len(updates):
        raise ValueError("two updates from the same client")
    return _run(deltas, round_idx, seed, dropped_ids, threshold, frac_bits)


_WEIGHT_KEY = "__secagg_weight__"


def secure_mean(
    updates: Sequence[Update],
    round_idx: int,
    seed: int | None = None,
    *,
    weighted: bool = True,
    dropped_ids: Iterable[int] = (),
    threshold: int | None = None,
    frac_bits: int = 32,
) -> AdapterState:
    """FedAvg under secure aggregation: each client masks ``w_i * delta_i`` and ``w_i`` (``w_i`` =
    ``num_samples`` if ``weighted`` else 1); the server divides the two sums. Same limits as
    :func:`secure_sum`; note the larger values ``w_i * delta_i`` tighten the overflow limit."""
    deltas = {u.client_id: weighted_input(u.delta, u.num_samples, weighted) for u in updates}
    if len(deltas) != len(updates):
        raise ValueError("two updates from the same client")
    total = _run(deltas, round_idx, seed, dropped_ids, threshold, frac_bits)
    return mean_from_sum(total, updates[0].delta)


def weighted_input(delta: AdapterState, num_samples: int, weighted: bool = True) -> AdapterState:
    """What a client masks for :func:`secure_mean`: ``w * delta`` (float64) and ``w`` itself, ``w`` =
    ``num_samples`` if ``weighted`` else 1. The same on every engine, so the sums agree to the bit."""
    w = float(num_samples) if weighted else 1.0
    scaled = {k: v.to(torch.float64) * w for k, v in delta.items()}
    scaled[_WEIGHT_KEY] = torch.tensor([w], dtype=torch.float64)
    return scaled


def mean_from_sum(total: AdapterState, reference: AdapterState) -> AdapterState:
    """The weighted mean from the unmasked sum of :func:`weighted_input` values, in ``reference``'s dtypes."""
    total = dict(total)
    weight = float(total.pop(_WEIGHT_KEY)[0])
    if not weight > 0:
        raise SecAggError("the securely summed weights are not positive")
    return {k: (total[k] / weight).to(reference[k].dtype) for k in reference}


def layout_of(values: AdapterState) -> Layout:
    """The (public) tensor layout of a masked vector: names (sorted), shapes and dtypes."""
    return _layout(values)
