"""The ``fedintel serve`` configuration file (pydantic; unknown keys are errors that name the field)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedintel.config import RuntimeConfig


class ServeConfigError(ValueError):
    """A problem in a serve config; the message names the field."""


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServeModelConfig(_S):
    """The base model every path serves (adapters are merged into copies of it)."""

    name: str = Field("smollm2-135m", description="Built-in model name, local Hugging Face directory or hub id.")
    num_layers: int | None = Field(None, ge=1, description="Keep only the first N layers (small test setups).")


class DraftConfig(_S):
    """The small model of a speculative or cascade path: one device process, the base model only (an
    adapter is merged into the large model alone). It must share the served model's tokenizer."""

    model: str | None = Field(None, description="Built-in name, local directory or hub id; none = model.name.")
    num_layers: int | None = Field(None, ge=1, description="Keep only its first N layers (with the model's own "
                                   "norm and head: an early exit of the same model).")


PATH_KINDS = ("single", "split", "speculative", "cascade")


class ServePathConfig(_S):
    """One way to run one model.

    ``single``: one process holds the whole model. ``split``: stages cut at ``cuts``, one process each.
    ``speculative``: a draft process proposes ``k`` tokens, the target (``model``; one process, or split at
    ``cuts``) checks them in one pass; the answer is exactly the target's greedy answer, so the path serves
    ``model`` beside single and split paths. ``cascade``: the draft (the small model) answers when its
    confidence reaches ``threshold``, else the large model (``model``, split at ``cuts``) answers; its answers
    are not the large model's, so a cascade serves a model id of its own: its ``name``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
    kind: Literal["single", "split", "speculative", "cascade"] | None = Field(
        None, description="single | split | speculative | cascade; none = single without cuts, split with them.")
    model: str = Field("base", description="What the path serves: base, or an adapter's name (see adapters); "
                       "speculative and cascade: the target / large model.")
    cuts: list[int] = Field(default_factory=list, description="Layer cut points; [] = one process.")
    draft: DraftConfig | None = Field(None, description="speculative and cascade: the small model.")
    k: int | None = Field(None, ge=1, le=16, description="speculative: draft tokens per target call (default 4).")
    threshold: float | None = Field(None, ge=0, le=1, description="cascade: escalate below this confidence "
                                    "(default 0.5).")
    confidence: Literal["mean_prob", "min_prob", "first_prob"] | None = Field(
        None, description="cascade: the small answer's confidence: geometric mean of its token probabilities, "
        "the least likely token's, or the first token's (default mean_prob).")

    @property
    def path_kind(self) -> str:
        """The kind, with the default filled in."""
        return self.kind or ("split" if self.cuts else "single")

    @model_validator(mode="after")
    def _check(self) -> ServePathConfig:
        kind, at = self.path_kind, f"paths.{self.name}"
        if kind == "single" and self.cuts:
            raise ValueError(f"{at}.cuts: kind single runs one process: drop cuts or use kind split")
        if kind == "split" and not self.cuts:
            raise ValueError(f"{at}.cuts: kind split needs cut points (e.g. cuts: [15])")
        if kind in ("speculative", "cascade") and self.draft is None:
            raise ValueError(f"{at}.draft: kind {kind} needs a draft (the small model: {{model, num_layers}})")
        if kind in ("single", "split") and self.draft is not None:
            raise ValueError(f"{at}.draft: only kind speculative or cascade runs a draft (this path is {kind})")
        if self.k is not None and kind != "speculative":
            raise ValueError(f"{at}.k: only kind speculative drafts k tokens (this path is {kind})")
        for key in ("threshold", "confidence"):
            if getattr(self, key) is not None and kind != "cascade":
                raise ValueError(f"{at}.{key}: only kind cascade escalates (this path is {kind})")
        return self


class LimitsConfig(_S):
    """What one request and the whole service may ask for; beyond it, an OpenAI-style 4xx error."""

    max_tokens: int = Field(256, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when a request gives none.")
    max_request_bytes: int = Field(65536, ge=256, description="Largest request body, bytes (413 beyond).")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight at once (429 beyond).")
    max_batch: int = Field(16, ge=1, description="Rows decoded together per path; 1 = one request at a time.")
    batch_prefill: bool = Field(True, description="Prefill the requests that arrive together in one forward "
                                "(else one at a time).")
    prefix_cache: int = Field(8, ge=0, description="Prompts whose KV cache each device keeps to reuse a shared "
                              "prefix (a system prompt, earlier turns); 0 = off.")


class RoutingConfig(_S):
    """How ``model: auto`` picks an adapter."""

    method: Literal["auto", "examples", "clients", "loss"] = Field(
        "auto", description="examples: MiniLM centroids of routing.examples. clients: centroids of the statistics "
        "that from_run's clients computed from their own data (a clustered or hierarchical run; only its expert "
        "adapters are routed to). loss: every adapter scores the prompt and the lowest loss wins. auto: examples "
        "when given, else clients when from_run is a clustered or hierarchical run, else loss.")
    examples: dict[str, list[str]] | None = Field(
        None, description="Adapter name -> example texts of its domain: route by MiniLM centroid similarity "
        "(as inference/experts.py).")
    encoder: str = Field("minilm-l6", description="Sentence encoder for examples and clients routing.")

    @model_validator(mode="after")
    def _check(self) -> RoutingConfig:
        if self.method == "examples" and not self.examples:
            raise ValueError("routing.method: examples needs routing.examples (adapter name -> example texts)")
        if self.examples and self.method in ("clients", "loss"):
            raise ValueError(f"routing.examples: given, but routing.method is {self.method}, which does not use them "
                             "(drop them, or set method: examples or auto)")
        return self


class ServeConfig(_S):
    """``fedintel serve --config FILE``."""

    model: ServeModelConfig = ServeModelConfig()
    runtime: RuntimeConfig = RuntimeConfig(device="cpu", threads=1)
    pack_weights: Literal["auto", "on", "off"] = Field(
        "auto", description="Device processes keep their linear layers' weights prepacked for oneDNN (a CPU in "
        "float32 or bfloat16: decode steps 1.3-1.8x faster). auto = on where it applies, off elsewhere.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str = Field("FEDINTEL_API_KEY", description="Environment variable holding the API key.")
    paths: list[ServePathConfig] = Field(default_factory=lambda: [ServePathConfig(name="local")])
    adapters: dict[str, str] = Field(default_factory=dict, description="Adapter name -> PEFT directory.")
    from_run: str | None = Field(None, description="A run directory: each adapters/<name> is served.")
    adapter_cuts: list[int] = Field(default_factory=list,
                                    description="How each adapter path not listed in paths is split.")
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()
    tls_dir: str | None = Field(None, description="CA for the device links (fedintel infer certs); none = fresh.")
    insecure: bool = Field(False, description="Plaintext device links (loopback only).")
    restart_dead: bool = Field(True, description="Restart a path whose device process died.")
    timeout_s: float = Field(60.0, gt=0, description="Device link timeout, seconds.")
    start_timeout_s: float = Field(300.0, gt=0, description="How long device processes may take to load, s.")

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        names = [p.name for p in self.paths]
        if len(set(names)) != len(names):
            raise ValueError(f"paths: names must be unique, got {names}")
        if self.limits.default_max_tokens > self.limits.max_tokens:
            raise ValueError(f"limits.default_max_tokens ({self.limits.default_max_tokens}) exceeds "
                             f"limits.max_tokens ({self.limits.max_tokens})")
        if self.routing.method == "clients" and not self.from_run:
            raise ValueError("routing.method: clients routes by the statistics of a run's clients: set from_run (a "
                             "clustered or hierarchical run directory)")
        if self.insecure and self.tls_dir:
            raise ValueError("insecure: true and tls_dir contradict each other: set one")
        for name in self.adapters:
            if name in ("base", "auto"):
                raise ValueError(f"adapters: {name!r} is reserved (base = no adapter, auto = routing)")
        for p in self.paths:
            if p.path_kind == "cascade" and p.name in ("base", "auto", self.model.name):
                raise ValueError(f"paths.{p.name}: a cascade serves the model id of its name, and {p.name!r} "
                                 "means the base model or routing: rename the path")
            if p.draft is not None and p.draft.model in (None, self.model.name):
                if p.draft.num_layers is None:
                    raise ValueError(f"paths.{p.name}.draft: the draft is the served model itself: set "
                                     "draft.num_layers (an early exit) or draft.model (a smaller model)")
                if self.model.num_layers is not None and p.draft.num_layers >= self.model.num_layers:
                    raise ValueError(f"paths.{p.name}.draft.num_layers: {p.draft.num_layers} layers is not an early "
                                     f"exit of the served model's {self.model.num_layers} (model.num_layers)")
        return self


def load_serve_config(path: str | Path | None, overrides: dict | None = None) -> ServeConfig:
    """Read and validate a serve config (``None``: the defaults); ``overrides`` are top-level keys."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ServeConfigError(f"{p}: no such serve config")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ServeConfigError(f"{p}: a serve config is a mapping of keys")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        # a whole-file check's message already names its fields
        lines = [(f"{'.'.join(str(x) for x in e['loc'])}: " if e["loc"] else "")
                 + e["msg"].removeprefix("Value error, ") for e in err.errors()]
        raise ServeConfigError(f"{path or 'serve config'}: " + "; ".join(lines)) from None
