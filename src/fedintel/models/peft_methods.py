"""The ``peft:`` section: each parameter-efficient method registered with its own config class.

After PEFT's ``register_peft_method``: a method is one config class (its knobs, with help text) and one
:func:`register_peft_method` call; ``peft: {method: lora, r: 8}`` validates against the class registered under
``lora``. The class names the Hugging Face PEFT config it becomes (:attr:`PeftConfig.peft_config_cls`, an
attribute of the ``peft`` package) and its keyword arguments (:meth:`PeftConfig.peft_kwargs`), so this module
imports no torch and no peft; :mod:`fedintel.models.peft_builder` builds the model.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from fedintel.registry import Registry
from fedintel.sections import Section


class PeftConfig(Section):
    """The parameter-efficient method (Hugging Face PEFT); each method registers a subclass."""

    method: str = Field("lora", description="The PEFT method (see `fedintel.models.peft_methods.registered()`).")
    peft_config_cls: ClassVar[str] = ""
    """Name of the ``peft`` package's config class this method becomes (e.g. ``LoraConfig``)."""

    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the PEFT config class (besides ``task_type``)."""
        return {}


class LoraPeftConfig(PeftConfig):
    """LoRA (Hu et al., ICLR 2022): trainable low-rank factors beside frozen weight matrices."""

    method: Literal["lora"] = "lora"  # type: ignore[assignment]
    peft_config_cls: ClassVar[str] = "LoraConfig"
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] | None = Field(
        None, description="Modules LoRA adapts; default: the attention query/value projections."
    )
    client_ranks: list[int] | None = Field(
        None,
        description="Heterogeneous LoRA ranks, assigned to clients in turn (each <= r): weak devices train "
        "a lower-rank slice of the adapter (use with aggregation.lora: exact).",
    )

    @model_validator(mode="after")
    def _ranks(self) -> LoraPeftConfig:
        if self.client_ranks is not None:
            bad = [x for x in self.client_ranks if not 1 <= x <= self.r]
            if bad:
                raise ValueError(f"peft.client_ranks: {bad} must be between 1 and peft.r ({self.r})")
        return self

    def peft_kwargs(self) -> dict[str, Any]:
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": self.target_modules}


class PrefixPeftConfig(PeftConfig):
    """Prefix tuning (Li and Liang, ACL 2021): trainable key/value prefixes in every layer.

    PEFT's default draws the prefix at random. Li & Liang train it through an MLP (``prefix_projection``: their
    reparameterisation, which they found stabilises training) and initialise it from the activations of real
    words (``prefix_init_text``, see :mod:`fedintel.models.prefix_init`).
    """

    method: Literal["prefix"] = "prefix"  # type: ignore[assignment]
    peft_config_cls: ClassVar[str] = "PrefixTuningConfig"
    num_virtual_tokens: int = Field(16, ge=1, description="Virtual tokens for prefix/prompt tuning.")
    # the new knobs leave dumps (and so the hashes of existing checkpoints) unchanged at their defaults
    prefix_projection: bool = Field(
        False, exclude_if=lambda v: v is False,
        description="Reparameterise the prefix through a two-layer MLP (Li & Liang; PEFT's prefix_projection). "
        "Training updates the MLP; a saved PEFT adapter holds the prefix it produces.",
    )
    prefix_projection_hidden: int | None = Field(
        None, ge=1, exclude_if=lambda v: v is None,
        description="Hidden size of that MLP (PEFT's encoder_hidden_size); default: the prefix's key/value width.",
    )
    prefix_init_text: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="Initialise the prefix with the frozen base model's keys and values of this text's tokens "
        "(Li & Liang's 'activations of real words'); repeated to num_virtual_tokens tokens when shorter. Causal "
        "language models only.",
    )

    @model_validator(mode="after")
    def _prefix_knobs(self) -> PrefixPeftConfig:
        if self.prefix_projection_hidden is not None and not self.prefix_projection:
            raise ValueError("peft.prefix_projection_hidden applies only with peft.prefix_projection: true")
        if self.prefix_init_text is not None and not self.prefix_init_text.strip():
            raise ValueError("peft.prefix_init_text: empty text; give words to initialise the prefix from, or omit it")
        return self

    def peft_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_virtual_tokens": self.num_virtual_tokens,
                                  "prefix_projection": self.prefix_projection}
        if self.prefix_projection_hidden is not None:
            kwargs["encoder_hidden_size"] = self.prefix_projection_hidden
        return kwargs


class PromptPeftConfig(PeftConfig):
    """Prompt tuning (Lester et al., EMNLP 2021): trainable soft-prompt embeddings before the input."""

    method: Literal["prompt"] = "prompt"  # type: ignore[assignment]
    peft_config_cls: ClassVar[str] = "PromptTuningConfig"
    num_virtual_tokens: int = Field(16, ge=1, description="Virtual tokens for prefix/prompt tuning.")

    def peft_kwargs(self) -> dict[str, Any]:
        return {"num_virtual_tokens": self.num_virtual_tokens}


PEFT_METHODS: Registry[PeftConfig, str] = Registry("peft", "method", "PEFT method")


def register_peft_method(*, name: str, config_cls: type[PeftConfig]) -> None:
    """Make ``peft: {method: <name>, ...}`` valid, validated by ``config_cls`` (which names its PEFT config)."""
    if not config_cls.peft_config_cls:
        raise ValueError(f"{config_cls.__name__}.peft_config_cls must name a config class of the peft package")
    PEFT_METHODS.register(name, config_cls, config_cls.peft_config_cls)


def registered() -> list[str]:
    """The names ``peft.method`` accepts."""
    return PEFT_METHODS.names()


def parse_peft_config(raw: Any) -> PeftConfig:
    """Validate a ``peft:`` mapping against the config class registered under its ``method``."""
    if isinstance(raw, dict):
        name = str(raw.get("method", "lora"))
        if name != "lora" and raw.get("client_ranks") is not None:
            raise ValueError("peft.client_ranks applies to peft.method lora only")
        raw = PEFT_METHODS.drop_defaults_of_others(raw, name)
    return PEFT_METHODS.parse(raw, "lora", PeftConfig)


register_peft_method(name="lora", config_cls=LoraPeftConfig)
register_peft_method(name="prefix", config_cls=PrefixPeftConfig)
register_peft_method(name="prompt", config_cls=PromptPeftConfig)
