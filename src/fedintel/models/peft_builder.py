"""Wrap a base model with a Hugging Face PEFT method and swap adapter tensors in and out.

All simulated clients share one base model in memory; a client is just an :data:`AdapterState` that is
copied into the model's trainable parameters before it trains and read back afterwards.
"""

from __future__ import annotations

import peft
import torch
from peft import PeftModel, TaskType, get_peft_model
from transformers import PreTrainedTokenizerBase

from fedintel.errors import ConfigError
from fedintel.models.peft_methods import PeftConfig
from fedintel.models.prefix_init import set_prefix, text_prefix
from fedintel.runtime import CPU, Runtime, keep_trainable_fp32
from fedintel.types import AdapterState


def peft_config_for(cfg: PeftConfig, task: str) -> peft.PeftConfig:
    """Translate fedintel's ``peft`` section into PEFT's own config object (the class its method names)."""
    task_type = TaskType.CAUSAL_LM if task == "causal_lm" else TaskType.SEQ_CLS
    return getattr(peft, cfg.peft_config_cls)(task_type=task_type, **cfg.peft_kwargs())


def build_peft_model(base: torch.nn.Module, cfg: PeftConfig, task: str, seed: int = 0,
                     tokenizer: PreTrainedTokenizerBase | None = None) -> PeftModel:
    """Add a freshly initialised adapter (deterministic for ``seed``) to ``base``; a prefix with
    ``prefix_init_text`` starts from the base's activations of that text (``tokenizer`` required)."""
    init_text = getattr(cfg, "prefix_init_text", None)
    prefix = None
    if init_text is not None:
        if task != "causal_lm":
            raise ConfigError("peft.prefix_init_text: needs a causal language model (model.task: causal_lm); an "
                              "encoder's tokens attend to the input after them, so no fixed prefix reproduces them")
        if tokenizer is None:
            raise ValueError("build_peft_model: peft.prefix_init_text needs the base model's tokenizer")
        prefix = text_prefix(base, tokenizer, init_text, cfg.num_virtual_tokens)  # type: ignore[attr-defined]
    torch.manual_seed(seed)  # PEFT initialises on the CPU, then moves: the same adapter on every device
    try:
        model = get_peft_model(base, peft_config_for(cfg, task))
    except ValueError as err:
        raise ValueError(f"peft: cannot apply {cfg.method} to this model: {err}") from None
    keep_trainable_fp32(model)  # e.g. a classifier head copied from a bfloat16 base
    if prefix is not None:
        set_prefix(model, prefix)
    return model


class AdapterSlot:
    """The trainable tensors of a PEFT model, addressable as one :data:`AdapterState`.

    States go in and come out as float32 tensors on the CPU, wherever the model runs (``runtime``), so
    aggregation, updates and checkpoints never depend on the device.
    """

    def __init__(self, model: PeftModel, runtime: Runtime = CPU) -> None:
        self.model = model
        self.runtime = runtime
        self.params: dict[str, torch.nn.Parameter] = {
            n: p for n, p in model.named_parameters() if p.requires_grad
        }
        if not self.params:
            raise ValueError("the PEFT model has no trainable parameters")

    def get(self) -> AdapterState:
        """A detached copy of the current adapter.

        The copies are views into one contiguous buffer: one allocation per adapter, so holding many
        clients' adapters does not fragment the heap (peak memory stays at about one adapter per client).
        """
        params = list(self.params.items())
        flat = torch.empty(sum(p.numel() for _, p in params), dtype=torch.float32)
        out, offset = {}, 0
        for n, p in params:
            view = flat[offset : offset + p.numel()].view(p.shape)
            view.copy_(p.detach())  # device -> CPU, in float32
            out[n] = view
            offset += p.numel()
        return out

    def set(self, state: AdapterState) -> None:
        """Load ``state`` into the model (shapes must match exactly)."""
        missing = self.params.keys() - state.keys()
        if missing:
            raise KeyError(f"adapter state lacks {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.params.values())
