"""Privacy accounting for client-level DP-FedAvg: epsilon after each round for a fixed delta.

Each round is one Poisson-subsampled Gaussian mechanism: every client takes part with probability
``sample_rate`` (``clients_per_round / num_clients``) and the server adds Gaussian noise of standard
deviation ``noise_multiplier * clip_norm`` to the sum of clipped updates (McMahan, Ramage, Talwar, Zhang,
"Learning Differentially Private Recurrent Language Models", ICLR 2018). The Renyi-DP of that mechanism
(Mironov, Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019) is
composed over rounds and converted to ``(epsilon, delta)`` by Google's ``dp_accounting`` library, the
accountant behind TensorFlow Privacy.

Two conversions from RDP to ``(epsilon, delta)`` are offered:

* ``"tight"`` (default): the improved bound of Canonne, Kamath, Steinke 2020 / Asoodeh et al. 2020 that
  ``dp_accounting`` uses; it gives a smaller, still valid epsilon.
* ``"classic"``: ``min_a rdp(a) + log(1/delta) / (a - 1)`` (Mironov 2017, Prop. 3), the conversion behind the
  numbers published by TF Privacy's tutorials and, to two decimals, Abadi et al. 2016's moments accountant.

Limits: the simulator samples a fixed number of clients per round without replacement; accounting it as
Poisson sampling at the same rate is the usual approximation (as in McMahan et al. 2018). Adjacency is
add/remove one client (all of its data).

Amplification by subsampling is claimed only where selection really is uniform random (a synchronous scheme
with ``network.selection: random`` or no network, and not the clustered ``similarity`` round in which every
client trains). Dropped or rejected clients only lower a sampled client's inclusion probability, so they keep
that bound. Everywhere else (``fastest_k``, ``deadline``, ``federation.scheme: async``) the same clients may be
chosen every time, so each client is accounted by its actual participation record
(:func:`participation_epsilon`): every aggregation that included its update is one Gaussian release without
amplification (with its update in one release ``k`` times, e.g. twice in a FedBuff buffer, that release has
sensitivity ``kC``, i.e. multiplier ``sigma / k``), and the run reports the worst client's epsilon. Under
asynchrony each buffer flush is a release; under local DP each upload is one (sensitivity ``2C``). How much
privacy asynchrony costs is an open question of the paper (section V); this accounting makes no claim
beyond the participation record it is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import dp_accounting
import numpy as np

Conversion = Literal["tight", "classic"]

# Fractional orders near 1 matter when epsilon is large; integer orders up to 256 when it is small.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 96, 128, 256, 512]
)


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp_accounting logs a warning for each fractional order whose series does not converge (the order
    is then skipped, which is safe); keep those out of the run log."""
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _event(noise_multiplier: float, sample_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)


def _check(noise_multiplier: float, sample_rate: float, delta: float) -> None:
    if not noise_multiplier >= 0:
        raise ValueError(f"privacy.noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not 0 < delta < 1:
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta}")


def rdp_to_epsilon(
    orders: np.ndarray, rdp: np.ndarray, delta: float, conversion: Conversion = "tight"
) -> float:
    """Convert an RDP curve (``rdp[i]`` at order ``orders[i]``) to epsilon at ``delta``."""
    if conversion == "tight":
        return float(dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])
    if conversion == "classic":
        mask = orders > 1
        return float(max(0.0, np.min(rdp[mask] + math.log(1 / delta) / (orders[mask] - 1))))
    raise ValueError(f"conversion must be 'tight' or 'classic', got {conversion!r}")


def compute_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    conversion: Conversion = "tight",
) -> float:
    """Epsilon after ``steps`` Poisson-subsampled Gaussian rounds (``inf`` when ``noise_multiplier`` is 0)."""
    _check(noise_multiplier, sample_rate, delta)
    if steps <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    with _quiet_absl():
        acc.compose(_event(noise_multiplier, sample_rate), steps)
    return rdp_to_epsilon(acc.orders, acc.rdp, delta, conversion)


def participation_epsilon(
    noise_multiplier: float,
    releases: Mapping[int, int],
    delta: float,
    conversion: Conversion = "tight",
) -> float:
    """Epsilon of one client from its participation record, without amplification by sampling.

    ``releases`` maps a multiplicity ``k`` (the client's update was in that release ``k`` times) to the number
    of such releases; each is a Gaussian mechanism with multiplier ``noise_multiplier / k``.
    """
    _check(noise_multiplier, 1.0, delta)
    if not any(n > 0 for n in releases.values()):
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    with _quiet_absl():
        for k, n in sorted(releases.items()):
            if n > 0:
                acc.compose(dp_accounting.GaussianDpEvent(noise_multiplier / k), n)
    return rdp_to_epsilon(acc.orders, acc.rdp, delta, conversion)


def worst_client_epsilon(
    noise_multiplier: float,
    records: Mapping[int, Mapping[int, int]],
    delta: float,
    conversion: Conversion = "tight",
) -> float:
    """The largest :func:`participation_epsilon` over clients (``records``: client id -> its releases)."""
    distinct = {tuple(sorted((k, n) for k, n in r.items() if n > 0)) for r in records.values()}
    return max((participation_epsilon(noise_multiplier, dict(d), delta, conversion) for d in distinct), default=0.0)


class PrivacyAccountant:
    """Running (epsilon, delta) of client-level DP over the rounds done so far.

    Args:
        noise_multiplier: ``sigma``; the noise std on the sum of clipped updates is ``sigma * clip_norm``.
        sample_rate: probability a given client takes part in a round, ``clients_per_round / num_clients``.
        delta: the target delta; conventionally below ``1 / num_clients``.
        conversion: ``"tight"`` (default) or ``"classic"`` RDP-to-DP conversion, see the module docstring.

    Example::

        acc = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
        for r in range(rounds):
            ...  # one DP aggregation
            acc.step()
            metrics["epsilon"] = acc.epsilon()
    """

    def __init__(
        self,
        noise_multiplier: float,
        sample_rate: float,
        delta: float = 1e-5,
        conversion: Conversion = "tight",
    ) -> None:
        _check(noise_multiplier, sample_rate, delta)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.conversion: Conversion = conversion
        self.steps = 0
        self._acc = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))

    @classmethod
    def for_local_dp(cls, noise_multiplier: float, delta: float = 1e-5) -> PrivacyAccountant:
        """Accountant for the *local* variant, from one client's point of view against the server.

        A client releases its clipped delta plus ``N(0, (sigma * C)^2)`` every round it takes part, with no
        amplification by sampling (the server sees who sent what). Under replace-one adjacency of that
        client's data the sensitivity is ``2C``, so the effective multiplier is ``sigma / 2``. Call
        :meth:`step` once per round the client took part in.
        """
        return cls(noise_multiplier / 2.0, sample_rate=1.0, delta=delta)

    def step(self, n: int = 1) -> None:
        """Account for ``n`` more rounds (aggregations)."""
        if n < 0:
            raise ValueError(f"step count must be >= 0, got {n}")
        if n == 0:
            return
        if self.noise_multiplier == 0:
            self._acc.compose(dp_accounting.NonPrivateDpEvent(), n)
        else:
            with _quiet_absl():
                self._acc.compose(_event(self.noise_multiplier, self.sample_rate), n)
        self.steps += n

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default: the accountant's delta); ``inf`` without noise."""
        if self.steps == 0:
            return 0.0
        d = self.delta if delta is None else delta
        if not 0 < d < 1:
            raise ValueError(f"delta must be in (0, 1), got {d}")
        return rdp_to_epsilon(self._acc.orders, self._acc.rdp, d, self.conversion)

    def state_dict(self) -> dict[str, float | int | str]:
        """Enough to rebuild the accountant on resume: pass the values to the constructor, then ``step``."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "conversion": self.conversion,
            "steps": self.steps,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, float | int | str]) -> PrivacyAccountant:
        """Rebuild an accountant saved with :meth:`state_dict`."""
        acc = cls(
            float(state["noise_multiplier"]),
            float(state["sample_rate"]),
            float(state["delta"]),
            str(state.get("conversion", "tight")),  # type: ignore[arg-type]
        )
        acc.step(int(state["steps"]))
        return acc


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    conversion: Conversion = "tight",
    rtol: float = 1e-3,
    max_sigma: float = 1e4,
) -> float:
    """Smallest noise multiplier (to relative tolerance ``rtol``) whose epsilon after ``steps`` rounds is at
    most ``target_epsilon``, found by bisection on ``log(sigma)`` (epsilon decreases with sigma).

    The returned sigma always satisfies the target (it is the upper end of the final bracket).
    """
    if not target_epsilon > 0:
        raise ValueError(f"privacy.target_epsilon must be positive, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _check(1.0, sample_rate, delta)

    def eps(sigma: float) -> float:
        return compute_epsilon(sigma, sample_rate, steps, delta, conversion)

    lo, hi = 1e-2, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 4
        if hi > max_sigma:
            raise ValueError(
                f"privacy.target_epsilon={target_epsilon} is unreachable with noise_multiplier <= {max_sigma} "
                f"for {steps} rounds at sample rate {sample_rate}; raise the target or lower the rounds"
            )
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
