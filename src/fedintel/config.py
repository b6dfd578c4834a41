"""Experiment configuration: one YAML file, validated by pydantic.

Every section forbids unknown keys, and every error names the field (``federation.rounds: ...``) and,
for choices, the allowed values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from fedintel.aggregation.builtin import AggregationConfig, parse_aggregation_config
from fedintel.attacks.config import AttackConfig
from fedintel.errors import ConfigError
from fedintel.models.peft_methods import PeftConfig, parse_peft_config
from fedintel.network.config import NetworkConfig
from fedintel.optimizers.base import OptimizerConfig
from fedintel.optimizers.builtin import parse_optimizer_config
from fedintel.privacy.config import PrivacyConfig
from fedintel.schemes.cluster_methods import ClusteringConfig, parse_clustering_config
from fedintel.schemes.config import AsyncConfig, HierarchyConfig
from fedintel.schemes.registry import check_scheme_name
from fedintel.sections import Section

__all__ = ["ConfigError", "ExperimentConfig", "PeftConfig", "dump_config", "load_config", "parse_config"]


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class RuntimeConfig(Section):
    """Where tensors live and in which precision (the hardware a run uses)."""

    device: str = Field(
        "auto",
        description="auto (an accelerator when one is visible, else cpu) | cpu | cuda | cuda:N | mps.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Precision of the frozen base model's compute. Adapter weights and optimizer state stay "
        "float32 (master weights); float16 uses a gradient scaler.",
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads of this process (default: all cores), and of each worker "
        "process when workers > 1 (default there: 1)."
    )
    workers: int = Field(
        1, ge=1, description="Local engine: train the clients of a round in this many worker processes, each "
        "holding one copy of the base model (on 2+ cores, 2 one-thread workers beat one 2-thread process).",
    )
    devices: list[str] | None = Field(
        None, description="Local engine: one worker process per device, e.g. [cuda:0, cuda:1] (sets workers).",
    )
    client_batching: Literal["off", "auto"] | int = Field(
        "off", description="Local engine: train up to N clients of a round together, their micro-batches in one "
        "forward and one backward through the shared base (LoRA on causal LMs; anything else trains one by one, "
        "with the reason logged). auto: as many as fit 16384 tokens per forward on an accelerator, off on the CPU.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.match(v):
            raise ValueError(f"{v!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("client_batching", mode="before")
    @classmethod
    def _client_batching(cls, v: Any) -> Any:
        if v is False or v is True:  # YAML reads a bare off / on as a boolean
            return "off" if v is False else "auto"
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, int) and v < 1 or not isinstance(v, int) and v not in ("off", "auto"):
            raise ValueError(f"{v!r} is not off, auto or a number of clients >= 1")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bad = [d for d in v if not DEVICE_PATTERN.match(d) or d == "auto"]
            if bad or not v:
                raise ValueError(f"{bad or v} must be a non-empty list of devices (cpu, cuda:N, mps)")
        return v

    @property
    def num_workers(self) -> int:
        """Worker processes of the local engine (1: clients train in the run's own process)."""
        return len(self.devices) if self.devices else self.workers


class ModelConfig(Section):
    """The pretrained base model."""

    name: str = Field(
        "smollm2-135m",
        description="A built-in offline model (smollm2-135m, minilm-l6, tiny-llama, tiny-bert), a local "
        "directory holding a Hugging Face model and tokenizer, or a Hugging Face id (org/name) loaded "
        "through the standard cache ($HF_HOME; honours HF_HUB_OFFLINE).",
    )
    revision: str | None = Field(None, description="Branch, tag or commit of a Hugging Face id.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none",
        description="Load the frozen base quantized with bitsandbytes (4bit: NF4 with double quantization, "
        "QLoRA); the compute dtype is runtime.dtype. Needs `pip install fedintel[gpu]`.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about 30 % more compute."
    )
    task: Literal["causal_lm", "classification"] = "causal_lm"
    num_labels: int = Field(2, ge=2, description="Classes, for task=classification.")
    num_layers: int | None = Field(
        None, ge=1, description="Keep only the first N transformer layers (pretrained weights kept)."
    )


class PartitionConfig(Section):
    """How the pooled data is split across clients."""

    method: Literal["iid", "dirichlet", "by_domain"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration over labels (method=dirichlet).")
    draw: Literal["per_client", "per_class"] = Field(
        "per_client",
        description="method=dirichlet: 'per_client' draws each client's class mix (Hsu et al., 2019; every "
                    "client holds samples_per_client); 'per_class' spreads each class over the clients (NIID-Bench, "
                    "Flower Datasets): sizes vary around samples_per_client and the clients' union keeps the "
                    "pool's class balance.",
    )

    @model_validator(mode="after")
    def _draw_is_dirichlet(self) -> PartitionConfig:
        # the default is harmless with any method (a saved config lists it); another value would be ignored
        if self.draw != "per_client" and self.method != "dirichlet":
            raise ValueError(f"data.partition.draw: only method=dirichlet draws (method is {self.method})")
        return self


class DataSourceConfig(Section):
    """One dataset of a mixture (``data.sources``): its rows become one domain, with its own columns."""

    domain: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$", description="The domain its rows form.")
    dataset: str = Field(description="As data.dataset: built-in name, 'json' with data_files, or 'hf:<id or dir>'.")
    data_files: list[str] | None = None
    subset: str | None = None
    split: str = "train"
    text_field: str = "text"
    text_pair_field: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    system_field: str | None = None
    label_field: str = "label"


class DataConfig(Section):
    """Where the text comes from and how it is split."""

    dataset: str = Field(
        "chatterbot",
        description="A built-in offline corpus (see `fedintel datasets`), 'json' with data_files, or "
        "'hf:<id or local dir>' read with datasets.load_dataset (honours HF_DATASETS_OFFLINE).",
    )
    data_files: list[str] | None = Field(None, description="JSON/JSONL files, for dataset=json.")
    subset: str | None = Field(None, description="Configuration name of an hf: dataset (e.g. 'sst2' of glue).")
    split: str = Field("train", description="Split of an hf: dataset to read (e.g. 'train', 'train[:10%]').")
    text_field: str = "text"
    text_pair_field: str | None = Field(
        None, description="Sentence-pair tasks: the second text's column; the tokenizer joins the two with its "
        "own separator (e.g. [SEP]). Rows where it is null are single sentences.",
    )
    prompt_field: str | None = Field(
        None, description="Instruction data: the prompt column. With response_field, examples are formatted with "
        "the tokenizer's chat template and the loss covers the response tokens only.",
    )
    response_field: str | None = Field(None, description="Instruction data: the response column.")
    system_field: str | None = Field(None, description="Instruction data: an optional system-message column.")
    label_field: str = "label"
    domain_field: str = "domain"
    domains: list[str] | None = Field(None, description="Use only these domains of the corpus.")
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per sample after truncation.")
    samples_per_client: int = Field(200, ge=1)
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of each client's shard held out.")
    global_eval_samples: int = Field(200, ge=1, description="Samples in the global held-out eval set.")
    partition: PartitionConfig = PartitionConfig()
    sources: list[DataSourceConfig] | None = Field(
        None, description="A mixture of datasets, one domain each (e.g. GLUE's sst2, qnli and qqp with Amazon "
        "polarity): each source names its own columns; its rows are read into this section's columns "
        "(text_field, text_pair_field, label_field, prompt/response/system_field) with domain_field = its domain.",
    )

    @model_validator(mode="after")
    def _sources_fit(self) -> DataConfig:
        if not self.sources:
            return self
        given = [k for k in ("dataset", "data_files", "subset", "split") if k in self.model_fields_set]
        if given:
            raise ValueError(f"data.sources and data.{given[0]}: a mixture names its datasets (and their subset and "
                             "split) in each source")
        names = [s.domain for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: domains must differ, got {names}")
        for i, src in enumerate(self.sources):
            at = f"data.sources[{i}] ({src.domain})"
            if src.dataset == "json" and not src.data_files:
                raise ValueError(f"{at}.data_files is required when its dataset is 'json'")
            if (src.prompt_field is None) != (src.response_field is None):
                raise ValueError(f"{at}: set prompt_field and response_field together, or neither")
            if (src.prompt_field is not None) != self.instruction:
                raise ValueError(f"{at}: instruction sources (prompt_field) and text sources cannot mix; data."
                                 "prompt_field/response_field say which this mixture is")
            if src.text_pair_field is not None and self.text_pair_field is None:
                raise ValueError(f"{at} has sentence pairs (text_pair_field: {src.text_pair_field}): set "
                                 "data.text_pair_field (the mixture's column for them, e.g. text_pair), else "
                                 "the second sentence would be dropped")
            if src.system_field is not None and self.system_field is None:
                raise ValueError(f"{at} has a system column: set data.system_field (e.g. system)")
        return self

    @property
    def name(self) -> str:
        """The dataset's name for tables and logs (a mixture lists its domains)."""
        return "mixture of " + ", ".join(s.domain for s in self.sources) if self.sources else self.dataset

    @model_validator(mode="after")
    def _json_needs_files(self) -> DataConfig:
        if self.dataset == "json" and not self.data_files:
            raise ValueError("data.data_files is required when data.dataset is 'json'")
        if self.dataset.startswith("hf:") and not self.dataset[3:].strip():
            raise ValueError("data.dataset: 'hf:' needs a dataset id or directory, e.g. hf:stanfordnlp/sst2")
        if (self.prompt_field is None) != (self.response_field is None):
            raise ValueError("data.prompt_field and data.response_field: set both for instruction data, or neither")
        if self.text_pair_field is not None and self.prompt_field is not None:
            raise ValueError("data.text_pair_field and data.prompt_field: sentence pairs and instruction data exclude "
                             "each other")
        if self.system_field is not None and self.prompt_field is None:
            raise ValueError("data.system_field needs data.prompt_field and data.response_field")
        return self

    @property
    def instruction(self) -> bool:
        """Whether examples are prompt/response pairs (loss on the response only)."""
        return self.prompt_field is not None


class FederationConfig(Section):
    """Rounds, sampling and the local training recipe."""

    scheme: str = Field(
        "fedavg", description="fedavg (sync rounds), clustered (CFL), hierarchical (client-edge-cloud), async, "
        "or another registered scheme (fedintel.schemes.registry)."
    )
    rounds: int = Field(3, ge=1)
    num_clients: int = Field(8, ge=1)
    clients_per_round: int = Field(8, ge=1)
    local_steps: int = Field(2, ge=1, description="Optimizer steps per client per round.")
    local_epochs: float | None = Field(
        None, gt=0, description="If set, overrides local_steps with epochs over the client's shard."
    )
    batch_size: int = Field(8, ge=1, description="Logical batch per optimizer step (paper: 80).")
    micro_batch_size: int = Field(8, ge=1, description="Samples per forward pass; the rest accumulate.")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate (paper: 2e-4).")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    max_update_norm: float | None = Field(
        None, gt=0, description="Reject client updates whose L2 norm exceeds this."
    )
    exclude_clients: list[int] = Field(
        default_factory=list,
        description="Clients that opted out: still drawn by the sampler (so the others' schedule is unchanged) "
        "but never asked to train. `fedintel forget` sets this.",
    )
    on_client_diverged: Literal["drop", "stop"] = Field(
        "drop",
        description="A client whose training loss becomes NaN/Inf: drop its update (logged as a 'diverged' "
        "event, the run goes on) or stop the run (the last good checkpoint is kept).",
    )

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        return check_scheme_name(v)

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"federation.clients_per_round ({self.clients_per_round}) exceeds "
                f"federation.num_clients ({self.num_clients})"
            )
        bad = [c for c in self.exclude_clients if not 0 <= c < self.num_clients]
        if bad:
            raise ValueError(f"federation.exclude_clients: {bad} are not client ids 0..{self.num_clients - 1}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"federation.batch_size ({self.batch_size}) must be a multiple of "
                f"federation.micro_batch_size ({self.micro_batch_size})"
            )
        return self


class EvalConfig(Section):
    """Evaluation after aggregation."""

    every: int = Field(1, ge=1, description="Evaluate every N rounds (the last round always).")
    at_start: bool = Field(True, description="Evaluate the initial adapter as round 0 (the baseline).")
    max_samples: int = Field(64, ge=1, description="Cap on samples per evaluation set.")
    per_client: bool = Field(True, description="Also evaluate the global adapter on each client's split.")
    batch_size: int = Field(16, ge=1)


class OutputConfig(Section):
    """Where runs are written."""

    dir: str = "runs"
    run_name: str | None = Field(None, description="Run directory name; default: <name>-<timestamp>.")
    checkpoint_every: int = Field(1, ge=1)
    save_adapter: bool = True
    overview: bool = Field(
        True,
        description="Draw plots/overview.png (loss, perplexity or accuracy, simulated time, bytes and energy per "
        "round, one figure) when the run finishes, and list it in summary.json.",
    )
    save_client_updates: bool = Field(
        False,
        description="Keep every accepted client delta per round in client_updates/ (needed by "
        "`fedintel forget --method approximate`; not allowed with privacy.secure_aggregation).",
    )


class ExperimentConfig(Section):
    """A whole experiment file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    name: str = "experiment"
    engine: Literal["local", "flower"] = Field(
        "local", description="local: clients train in this process; flower: on Flower SuperNodes over gRPC."
    )
    runtime: RuntimeConfig = RuntimeConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    peft: SerializeAsAny[PeftConfig] = Field(
        default_factory=lambda: parse_peft_config({}),
        description="PEFT method: {method: lora | prefix | prompt | <registered>, <its knobs>}.",
    )
    federation: FederationConfig = FederationConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    aggregation: SerializeAsAny[AggregationConfig] = Field(
        default_factory=lambda: parse_aggregation_config({}),
        description="Aggregation rule: {rule: fedavg | median | trimmed_mean | krum | multi_krum | norm_bound | ota "
        "| <registered>, weighted, lora, <its knobs>}.",
    )
    clustering: SerializeAsAny[ClusteringConfig] = Field(
        default_factory=lambda: parse_clustering_config({}),
        description="Clustered scheme: {method: given | similarity | ifca | capability | latency | <registered>, ...}.",
    )
    hierarchy: HierarchyConfig = HierarchyConfig()
    asynchronous: AsyncConfig = Field(AsyncConfig(), alias="async")
    network: NetworkConfig = NetworkConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    attack: AttackConfig = AttackConfig()
    optimizer: SerializeAsAny[OptimizerConfig] = Field(
        default_factory=lambda: parse_optimizer_config({}),
        description="Federated optimizer: {name: fedavg | fedprox | scaffold | fedavgm | fedadam | fedyogi | "
        "fedadagrad | <registered>, <its knobs>}; validated by the config class registered under the name.",
    )

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer(cls, raw: Any) -> OptimizerConfig:
        return parse_optimizer_config(raw)

    @field_validator("aggregation", mode="before")
    @classmethod
    def _aggregation(cls, raw: Any) -> AggregationConfig:
        return parse_aggregation_config(raw)

    @field_validator("clustering", mode="before")
    @classmethod
    def _clustering(cls, raw: Any) -> ClusteringConfig:
        return parse_clustering_config(raw)

    @field_validator("peft", mode="before")
    @classmethod
    def _peft(cls, raw: Any) -> PeftConfig:
        return parse_peft_config(raw)

    @model_validator(mode="before")
    @classmethod
    def _legacy_threads(cls, data: Any) -> Any:
        # `threads` moved into `runtime`; old experiment files (and published runs) keep working.
        if isinstance(data, dict) and "threads" in data:
            data = dict(data)
            threads = data.pop("threads")
            runtime = dict(data.get("runtime") or {})
            if runtime.get("threads") not in (None, threads):
                raise ValueError("threads: the top-level key moved to runtime.threads; set only runtime.threads")
            if threads is not None:
                runtime["threads"] = threads
            data["runtime"] = runtime
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        f = self.federation
        wall = self.asynchronous.clock == "wall"
        if f.scheme == "async" and not wall and not self.network.enabled:
            raise ValueError("federation.scheme async needs the simulated clock: set network.enabled: true "
                             "(or async.clock: wall on engine: flower)")
        if wall and self.engine != "flower":
            raise ValueError("async.clock: wall merges replies as they arrive from Flower SuperNodes; it needs "
                             "engine: flower (use clock: simulated on the local engine)")
        if wall and f.scheme != "async":
            raise ValueError("async.clock: wall applies to federation.scheme async only")
        if self.aggregation.lora == "exact" and self.peft.method != "lora":
            raise ValueError("aggregation.lora: exact applies to peft.method lora only")
        if self.privacy.dp != "none" and self.aggregation.rule not in ("fedavg",):
            raise ValueError("privacy.dp: differential privacy is calibrated for aggregation.rule fedavg")
        if self.runtime.num_workers > 1 and self.engine != "local":
            raise ValueError("runtime.workers / runtime.devices: worker processes belong to the local engine; "
                             "on engine: flower each SuperNode is a worker")
        if self.data.text_pair_field is not None and self.engine == "flower":
            raise ValueError("data.text_pair_field: sentence pairs are not supported on engine: flower yet (its shards "
                             "hold one text per row); use engine: local")
        if self.runtime.client_batching != "off" and (self.runtime.num_workers > 1 or self.engine != "local"):
            what = "engine: flower" if self.engine != "local" else "runtime.workers / runtime.devices"
            raise ValueError(f"runtime.client_batching batches clients inside the local engine's one process; it "
                             f"cannot apply with {what} (turn one of them off)")
        if self.data.instruction and self.engine == "flower":
            raise ValueError("data.prompt_field: instruction data is not supported on engine: flower yet (its shards "
                             "hold plain text); use engine: local")
        if self.data.instruction and self.model.task != "causal_lm":
            raise ValueError("data.prompt_field: instruction data (prompt/response) needs model.task causal_lm")
        if getattr(self.peft, "prefix_init_text", None) is not None and self.model.task != "causal_lm":
            raise ValueError("peft.prefix_init_text: a prefix from a text's activations needs model.task causal_lm "
                             "(an encoder's tokens attend to the input after them)")
        problem = _unsupported_combination(self)
        if problem:
            raise ValueError(problem)
        if self.attack.kind == "label_flip" and self.model.task != "classification":
            raise ValueError("attack.kind: label_flip needs model.task classification")
        if self.output.save_client_updates and self.privacy.secure_aggregation:
            raise ValueError("output.save_client_updates: under privacy.secure_aggregation the server never "
                             "sees individual client updates; turn one of them off")
        self.optimizer.cross_check(self)  # each federated optimizer refuses the settings it cannot serve
        self.aggregation.cross_check(self)  # and so does each aggregation rule
        return self


def _unsupported_combination(cfg: ExperimentConfig) -> str | None:
    """One line naming two settings the code cannot honour together (and why), or None.

    Each combination here would otherwise be silently dropped: one wrapper replaces the other's aggregator.
    """
    a, p = cfg.aggregation, cfg.privacy
    fedasync = cfg.federation.scheme == "async" and cfg.asynchronous.mode == "fedasync"
    if p.secure_aggregation and a.rule != "fedavg":
        return (f"privacy.secure_aggregation: the server sees only the masked sum, so it cannot compute "
                f"aggregation.rule {a.rule}; use rule fedavg or turn secure aggregation off")
    if p.secure_aggregation and a.lora == "exact":
        return ("privacy.secure_aggregation: the masked sum averages LoRA factors, so aggregation.lora: exact "
                "(products B@A per client) cannot be honoured; use lora naive")
    if p.secure_aggregation and cfg.engine == "flower" and cfg.federation.scheme != "fedavg":
        return (f"privacy.secure_aggregation on engine: flower runs one key set-up per synchronous round; "
                f"federation.scheme {cfg.federation.scheme} aggregates other groups of updates; use scheme fedavg "
                "or engine local (where secure aggregation is a simulation)")
    if p.secure_aggregation and cfg.engine == "flower" and cfg.federation.max_update_norm is not None:
        return ("federation.max_update_norm: under privacy.secure_aggregation on engine: flower the server only "
                "holds masked updates and cannot check their norm; unset it (a client clipping its own update "
                "would not stop a malicious one) or use privacy.dp: central, whose clients clip before masking")
    if a.lora == "exact" and a.rule != "fedavg":
        return (f"aggregation.lora: exact averages the products B@A (a weighted mean); it cannot apply "
                f"aggregation.rule {a.rule}; use rule fedavg or lora naive")
    if p.dp == "central" and a.lora == "exact":
        return ("privacy.dp: central clips and noises the mean of the LoRA factors; aggregation.lora: exact is "
                "not supported with it (use lora naive, or dp local)")
    if fedasync and (p.dp == "central" or p.secure_aggregation or a.rule != "fedavg" or a.lora == "exact"):
        what = ("privacy.dp: central" if p.dp == "central" else "privacy.secure_aggregation" if p.secure_aggregation
                else f"aggregation.rule {a.rule}" if a.rule != "fedavg" else "aggregation.lora: exact")
        return (f"async.mode: fedasync mixes each arrival into the global adapter without an aggregator, so {what} "
                "would be ignored; use async.mode fedbuff")
    return None


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `fedintel run --help` and examples/)"
        lines.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    return "; ".join(lines)


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def parse_config(raw: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a config mapping (after applying ``--set`` style overrides)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config file must hold a mapping of sections (model, data, peft, ...)")
    for o in overrides or []:
        _apply_override(raw, o)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_config(raw, overrides)


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML, as stored in a run directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
