"""Config sections of the federated schemes and of aggregation (parts of ``ExperimentConfig``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AggregationConfig(_Section):
    """How the server combines client deltas."""

    rule: Literal["fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound", "ota"] = "fedavg"
    weighted: bool = Field(True, description="Weight clients by their sample counts (fedavg, norm_bound, ota).")
    trim_beta: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: fraction cut at each end.")
    num_malicious: int = Field(0, ge=0, description="krum/multi_krum: assumed number of attackers f.")
    multi_krum_m: int | None = Field(None, ge=1, description="multi_krum: updates averaged (default n - f).")
    max_norm: float = Field(1.0, gt=0, description="norm_bound: L2 bound each delta is clipped to.")
    snr_db: float = Field(20.0, description="ota: receive SNR in dB of the analog over-the-air sum.")
    power_control: Literal["truncated_inversion", "none"] = "truncated_inversion"
    lora: Literal["naive", "exact"] = Field(
        "naive",
        description="naive: average LoRA A and B separately; exact: average the products B@A and "
        "re-factorise to the rank by truncated SVD.",
    )


class ClusteringConfig(_Section):
    """Clustered federated fine-tuning (CFL-LoRA): one adapter per cluster."""

    num_clusters: int = Field(4, ge=1)
    method: Literal["given", "similarity", "ifca", "capability", "latency"] = Field(
        "given",
        description="given: the data partition's domains; similarity: cosine similarity of first updates "
        "(agglomerative or kmeans); ifca: each client picks the lowest-loss cluster every round; "
        "capability/latency: group by device FLOP/s or by distance to the base station.",
    )
    algorithm: Literal["agglomerative", "kmeans"] = "agglomerative"
    share_beta: float = Field(
        0.0, ge=0, le=1, description="Cross-cluster sharing: mix beta of the mean of all clusters in."
    )
    share_every: int = Field(1, ge=1, description="Rounds between cross-cluster sharing steps.")
    shared_keys: list[str] = Field(
        default_factory=list,
        description="Substrings of adapter tensor names averaged across all clusters every round "
        "(e.g. 'layers.0.' shares the first layer).",
    )
    ifca_eval_batches: int = Field(2, ge=1, description="ifca: micro-batches of local data to score clusters.")


class TierConfig(_Section):
    """One aggregation tier between the clients and the cloud."""

    nodes: int = Field(..., ge=1, description="Aggregators in this tier (edge servers at the lowest tier).")
    period: int = Field(1, ge=1, description="Aggregate children every `period` rounds.")


class HierarchyConfig(_Section):
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


class AsyncConfig(_Section):
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
