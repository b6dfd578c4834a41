"""Config sections of the federated schemes (parts of ``ExperimentConfig``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedintel.sections import Section


class TierConfig(Section):
    """One aggregation tier between the clients and the cloud."""

    nodes: int = Field(..., ge=1, description="Aggregators in this tier (edge servers at the lowest tier).")
    period: int = Field(1, ge=1, description="Aggregate children every `period` rounds.")


class HierarchyConfig(Section):
    """Hierarchical federated fine-tuning: client -> edge -> ... -> cloud (HierFAVG generalised)."""

    tiers: list[TierConfig] = Field(
        default_factory=lambda: [TierConfig(nodes=2, period=1)],
        description="From the edge tier upwards; clients attach to the nearest edge server.",
    )
    cloud_period: int = Field(2, ge=1, description="kappa: rounds between cloud aggregations.")
    personalize: bool = Field(
        True, description="Also evaluate each client with its edge model (personalised) besides the global one."
    )

    @model_validator(mode="after")
    def _periods(self) -> HierarchyConfig:
        prev = 1
        for i, t in enumerate(self.tiers):
            if t.period % prev:
                raise ValueError(f"hierarchy.tiers.{i}.period ({t.period}) must be a multiple of the tier below ({prev})")
            prev = t.period
        if self.cloud_period % prev:
            raise ValueError(f"hierarchy.cloud_period ({self.cloud_period}) must be a multiple of the top tier's period ({prev})")
        return self


class AsyncConfig(Section):
    """Asynchronous federated fine-tuning (FedAsync / FedBuff) on the simulated or the wall clock."""

    mode: Literal["fedasync", "fedbuff"] = "fedasync"
    clock: Literal["simulated", "wall"] = Field(
        "simulated",
        description="simulated: arrivals ordered by the network model (deterministic, any engine); wall: "
        "replies merged in the order they really arrive from Flower SuperNodes (engine flower only; not "
        "bit-reproducible, no simulated time or energy).",
    )
    concurrency: int | None = Field(None, ge=1, description="Clients training at once (default clients_per_round).")
    alpha: float = Field(0.6, gt=0, le=1, description="FedAsync mixing weight at zero staleness.")
    staleness: Literal["constant", "polynomial", "hinge"] = "polynomial"
    staleness_a: float = Field(0.5, ge=0, description="Exponent (polynomial) or slope (hinge).")
    staleness_b: int = Field(4, ge=0, description="hinge: staleness tolerated before decay.")
    buffer_size: int = Field(4, ge=1, description="FedBuff: aggregate every M arrivals.")
    server_lr: float = Field(1.0, gt=0, description="FedBuff: server step on the buffered mean delta.")
    max_staleness: int | None = Field(None, ge=0, description="Drop updates staler than this (reported).")
    wait_for_new_version: bool = Field(
        False,
        description="A client that finished waits for the next global version before training again "
        "(zero staleness; with fedbuff and buffer = all clients this is synchronous FedAvg).",
    )
    arrivals_per_round: int | None = Field(
        None, ge=1, description="Server arrivals between evaluations/checkpoints (default clients_per_round)."
    )
