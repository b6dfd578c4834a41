"""The ``privacy:`` section of an experiment file: differential privacy and secure aggregation.

Field semantics follow :mod:`fedintel.privacy.dp` (clipping and noise), :mod:`fedintel.privacy.accountant`
(epsilon) and :mod:`fedintel.privacy.secagg` (masking). Errors name the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedintel.sections import Section


class PrivacyConfig(Section):
    """Differential privacy and secure aggregation settings."""

    dp: Literal["none", "central", "local"] = Field(
        "none",
        description="none; central: the server clips-sums-noises (client-level DP-FedAvg); "
        "local: every client clips and adds its own noise before upload.",
    )
    clip_norm: float = Field(1.0, gt=0, description="C: L2 bound on each client's whole adapter delta.")
    noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="sigma: noise std is sigma * C on the sum of clipped deltas (central) or on each delta "
        "(local). Give this or target_epsilon.",
    )
    target_epsilon: float | None = Field(
        None,
        gt=0,
        description="Derive sigma so that epsilon after all planned rounds is at most this. "
        "Give this or noise_multiplier.",
    )
    delta: float = Field(
        1e-5, gt=0, lt=1, description="The delta of (epsilon, delta)-DP; keep it below 1/num_clients."
    )
    accounting: Literal["tight", "classic"] = Field(
        "tight", description="RDP-to-(epsilon, delta) conversion; 'classic' matches older published tables."
    )
    secure_aggregation: bool = Field(
        False,
        description="Pairwise-masked secure aggregation (Bonawitz et al. 2017): the server sees only sums.",
    )
    secagg_threshold: int | None = Field(
        None,
        ge=2,
        description="Shamir threshold t: survivors needed to unmask; default a majority of the round's clients.",
    )
    secagg_frac_bits: int = Field(
        32, ge=8, le=48, description="Fixed-point fractional bits; quantisation error <= n * 2^-(bits+1)."
    )

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if self.dp == "none":
            for name in ("noise_multiplier", "target_epsilon"):
                if getattr(self, name) is not None:
                    raise ValueError(f"privacy.{name} is set but privacy.dp is 'none'; set privacy.dp")
        else:
            given = [n for n in ("noise_multiplier", "target_epsilon") if getattr(self, n) is not None]
            if not given:
                raise ValueError(
                    f"privacy.dp is {self.dp!r}: set privacy.noise_multiplier or privacy.target_epsilon"
                )
            if len(given) == 2:
                raise ValueError("set only one of privacy.noise_multiplier and privacy.target_epsilon")
        return self

    def resolve_noise_multiplier(self, rounds: int, sample_rate: float) -> float:
        """sigma to use: ``noise_multiplier`` if given, else derived from ``target_epsilon``.

        Args:
            rounds: planned aggregation rounds (``federation.rounds``).
            sample_rate: per-round participation probability (``clients_per_round / num_clients``); used for
                central DP only. Local DP is accounted per client over ``rounds`` participations without
                amplification and with replace-one sensitivity ``2C`` (see ``PrivacyAccountant.for_local_dp``).

        Returns 0.0 when ``dp`` is ``'none'``.
        """
        if self.dp == "none":
            return 0.0
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        from fedintel.privacy.accountant import noise_for_target_epsilon  # dp_accounting loads lazily

        if self.target_epsilon is None:  # unreachable: the validator requires one of the two
            raise ValueError("privacy.target_epsilon is required to derive the noise multiplier")
        if self.dp == "central":
            return noise_for_target_epsilon(
                self.target_epsilon, self.delta, sample_rate, rounds, conversion=self.accounting
            )
        return 2.0 * noise_for_target_epsilon(
            self.target_epsilon, self.delta, 1.0, rounds, conversion=self.accounting
        )
