"""The ``fedintel infer`` configuration file: devices, links, paths and the workload (pydantic).

Every section forbids unknown keys and errors name the field (``links: 2 links for 2 devices ...``).
Rates are bit/s, latencies seconds, compute FLOP/s, memory bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedintel.inference.multiaccess import POLICIES, AccessPath
from fedintel.inference.planner import DeviceSpec, LinkSpec, chain_links
from fedintel.inference.protocol import is_loopback, parse_address


class InferConfigError(ValueError):
    """A problem in an infer config; the message names the field."""


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceConfig(_S):
    """A device of the simulated network."""

    name: str
    flops_per_s: float = Field(gt=0, description="Sustained compute, FLOP/s.")
    memory_bytes: float | None = Field(None, gt=0, description="Memory for weights + KV cache; none = unlimited.")
    mem_bw_bytes_per_s: float | None = Field(None, gt=0, description="Memory bandwidth, bytes/s; none = unlimited.")

    def spec(self) -> DeviceSpec:
        return DeviceSpec(self.name, self.flops_per_s, self.memory_bytes or float("inf"),
                          self.mem_bw_bytes_per_s or float("inf"))


class LinkConfig(_S):
    """A link between consecutive devices."""

    rate_bps: float = Field(gt=0, description="Data rate, bit/s.")
    latency_s: float = Field(0.0, ge=0, description="One-way latency, seconds.")

    def spec(self) -> LinkSpec:
        return LinkSpec(self.rate_bps, self.latency_s)


class PathConfig(_S):
    """A multi-access path to a serving node."""

    name: str
    kind: str = "cellular"
    address: str | None = Field(None, description="host:port of a running worker; none = start one locally.")
    rate_bps: float = Field(100e6, gt=0)
    latency_s: float = Field(0.01, ge=0)
    availability: float = Field(1.0, ge=0, le=1)
    cost_per_mb: float = Field(0.0, ge=0)
    cost_per_request: float = Field(0.0, ge=0)


class InferConfig(_S):
    """A whole ``fedintel infer`` file; every mode reads the parts it needs."""

    model: str = Field("smollm2-135m", description="The (large) model: built-in name or local HF directory.")
    num_layers: int | None = Field(None, ge=1, description="Keep only the first N layers of the model.")
    draft_model: str | None = Field(None, description="Small model for speculative/cascade; default: the model.")
    draft_num_layers: int | None = Field(None, ge=1, description="Layers of the small model (early-exit draft).")
    draft_quantize: bool = Field(False, description="Run the small model with int8 dynamic quantisation.")
    tls_dir: str | None = Field(None, description="Certificate directory (ca.crt, and ca.key to issue device "
                                "certificates; or ca.crt plus origin.crt/.key); default: a fresh CA per run.")
    insecure: bool = Field(False, description="Plaintext links without authentication; loopback addresses only.")
    timeout_s: float = Field(30.0, gt=0, description="Socket timeout for every request, seconds.")
    threads: int = Field(1, ge=1, description="torch threads per device process.")
    device: str = Field("cpu", description="Where device processes compute: cpu | cuda | cuda:N | mps | auto.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights and activations of the device processes (hidden states travel in it).")
    pack_weights: Literal["auto", "on", "off"] = Field(
        "auto", description="Device processes keep their linear layers' weights prepacked for oneDNN (a CPU in "
        "float32 or bfloat16: one-token steps about 1.3x faster). auto = on where it applies, off elsewhere.")
    prompt: str = "What is the capital of France?"
    prompts: list[str] | None = Field(None, description="Several prompts (cascade, multiaccess); default: built in.")
    max_new_tokens: int = Field(16, ge=1)
    chat: bool = Field(True, description="Wrap prompts in the tokenizer's chat template.")
    # split
    devices: list[DeviceConfig] = Field(default_factory=list)
    links: list[LinkConfig] = Field(default_factory=list)
    source: int = Field(0, ge=0, description="Index of the device where queries start.")
    cuts: list[int] | None = Field(None, description="Layer cut points; default: chosen by the planner.")
    stages: list[str] | None = Field(None, description="Addresses of stage workers already running.")
    # vertical
    k: int = Field(4, ge=1, description="Draft tokens per verification (speculative).")
    threshold: float = Field(0.5, ge=0, le=1, description="Escalate below this confidence (cascade).")
    confidence: Literal["mean_prob", "min_prob", "first_prob"] = "mean_prob"
    # multi-access
    paths: list[PathConfig] = Field(default_factory=list)
    policy: str = "fastest"
    requests: int = Field(12, ge=1)
    concurrency: int = Field(3, ge=1)
    kill_after: int | None = Field(None, ge=0, description="Kill the preferred path's node after N answers.")
    # experts / analytics
    domains: list[str] = Field(default_factory=lambda: ["coding", "emotion", "tech_support", "trivia"])
    adapters: dict[str, str] = Field(default_factory=dict, description="Domain -> PEFT adapter dir (experts).")
    num_devices: int = Field(3, ge=1, description="Devices in federated analytics.")
    from_run: str | None = Field(None, description="Experts: a finished clustered or hierarchical run directory; "
                                 "each of its cluster/edge adapters becomes an expert device.")
    baseline: str | None = Field(None, description="Experts from a run: the global adapter to compare with (a "
                                 "FedAvg run directory or a PEFT directory); default: the run's own global adapter.")

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "key" in data:
            raise ValueError("key: the shared HMAC key is gone: links are mutual TLS (tls_dir: a certificate "
                             "directory, default a fresh CA per run; insecure: true for plaintext on loopback)")
        return data

    @model_validator(mode="after")
    def _check(self) -> InferConfig:
        from fedintel.config import DEVICE_PATTERN

        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device: {self.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        if self.pack_weights == "on" and (self.dtype == "float16" or not self.device.startswith(("cpu", "auto"))):
            raise ValueError(f"pack_weights: on cannot run with device {self.device} and dtype {self.dtype}: oneDNN "
                             "packing needs a CPU in float32 or bfloat16 (use auto or off)")
        if self.insecure and self.tls_dir:
            raise ValueError("insecure: true and tls_dir contradict each other: plaintext links use no certificates")
        if self.insecure:
            remote = [(f"stages.{i}", a) for i, a in enumerate(self.stages or [])]
            remote += [(f"paths.{i}.address", p.address) for i, p in enumerate(self.paths) if p.address]
            for where, addr in remote:
                host = parse_address(addr)[0]
                if not is_loopback(host):
                    raise ValueError(f"insecure: plaintext links are for loopback only, but {where} is {addr}; "
                                     "drop insecure to use mutual TLS")
        if self.devices and len(self.links) != len(self.devices) - 1:
            raise ValueError(f"links: {len(self.links)} links given for {len(self.devices)} devices in a chain; "
                             f"need {len(self.devices) - 1}")
        if self.devices and self.source >= len(self.devices):
            raise ValueError(f"source: device {self.source} does not exist ({len(self.devices)} devices)")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.baseline and not self.from_run:
            raise ValueError("baseline: compares a run's experts with a global adapter; set from_run too")
        if self.from_run and self.adapters:
            raise ValueError("adapters and from_run both name the experts; set one")
        if self.from_run and "domains" in self.model_fields_set:
            raise ValueError("domains: a run's experts serve the run's own domains; drop domains or from_run")
        if len({p.name for p in self.paths}) != len(self.paths):
            raise ValueError("paths: names must be unique")
        return self

    def device_specs(self) -> list[DeviceSpec]:
        """Devices (a phone and an edge server if none configured)."""
        if not self.devices:
            return [DeviceSpec("phone", 5e11, 4e9, 2e10), DeviceSpec("edge", 1e13, 32e9, 2e11)]
        return [d.spec() for d in self.devices]

    def link_specs(self) -> dict[tuple[int, int], LinkSpec]:
        """Chain links (a 100 Mbit/s, 10 ms link if none configured)."""
        if not self.devices:
            return chain_links([LinkSpec(100e6, 0.01)])
        return chain_links([lk.spec() for lk in self.links])

    def access_paths(self, addresses: list[str]) -> list[AccessPath]:
        """Paths with their (possibly launched) addresses."""
        return [AccessPath(p.name, a, p.kind, p.rate_bps, p.latency_s, p.availability, p.cost_per_mb,
                           p.cost_per_request) for p, a in zip(self.paths, addresses, strict=True)]


def default_paths() -> list[PathConfig]:
    """Cellular to an edge server, device-to-device to a neighbour, a roadside unit."""
    return [
        PathConfig(name="cellular-edge", kind="cellular", rate_bps=100e6, latency_s=0.015, availability=0.95,
                   cost_per_mb=0.5),
        PathConfig(name="d2d-neighbour", kind="d2d", rate_bps=20e6, latency_s=0.005, availability=0.8),
        PathConfig(name="rsu", kind="rsu", rate_bps=50e6, latency_s=0.01, availability=0.9, cost_per_mb=0.1),
    ]


def load_infer_config(path: str | Path | None) -> InferConfig:
    """Read and validate a YAML file (``None``: all defaults)."""
    if path is None:
        return InferConfig()
    path = Path(path)
    if not path.is_file():
        raise InferConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InferConfigError(f"{path}: malformed YAML: {err}") from None
    if not isinstance(raw, dict):
        raise InferConfigError(f"{path}: expected a mapping of settings")
    try:
        return InferConfig.model_validate(raw)
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            msgs.append(f"{loc}: {msg}" if loc else msg)
        raise InferConfigError(f"{path}: " + "; ".join(msgs)) from None

