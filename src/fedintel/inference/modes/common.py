"""What the modes share: the models they load, the prompts, the link security and device-process arguments."""

from __future__ import annotations

from typing import Any

from fedintel.config import ModelConfig, RuntimeConfig
from fedintel.inference.config import InferConfig, InferConfigError
from fedintel.inference.planner import SplitPlan, evaluate_plan, plan_split, problem_from_config
from fedintel.inference.protocol import LinkSecurity
from fedintel.inference.split import stage_bounds
from fedintel.inference.stage import quantize_int8
from fedintel.models.loader import LoadedModel, load_base_model
from fedintel.runtime import resolve_runtime

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "What is 2 plus 2?",
    "Who wrote Romeo and Juliet?",
    "How do I reset my password?",
    "What is the boiling point of water?",
    "Name a primary colour.",
    "What is machine learning?",
]


def link_security(cfg: InferConfig, joining: str = "") -> LinkSecurity | None:
    """This process's side of the links from the config; ``None``: a fresh CA for the devices launched.

    ``joining`` names the config field listing running devices, which must share a CA with us."""
    if cfg.insecure:
        return LinkSecurity.plaintext()
    if cfg.tls_dir:
        return LinkSecurity.tls(cfg.tls_dir, "origin")
    if joining:
        raise InferConfigError(f"{joining}: running devices are reached over mutual TLS: pass --certs DIR (tls_dir, "
                               "their CA and a certificate for 'origin', from `fedintel infer certs`), or --insecure "
                               "for plaintext on loopback")
    return None


def load_model(name: str, num_layers: int | None, cfg: InferConfig | None = None) -> LoadedModel:
    """A model (with its tokenizer) in this process; on ``cfg``'s device and dtype when given."""
    runtime = resolve_runtime(RuntimeConfig(device=cfg.device, dtype=cfg.dtype), apply_threads=False) if cfg else None
    return load_base_model(ModelConfig(name=name, num_layers=num_layers), *([runtime] if runtime else []))


def pack_local(model: Any, cfg: InferConfig) -> int:
    """Prepack ``model``'s linears for oneDNN as the device processes do (``cfg.pack_weights``), so a model that
    runs in this process is compared with them on equal terms; call it on the thread that will run the model.
    How many were packed (0: packing does not apply, or is off)."""
    from fedintel.inference.packing import pack_linears, packing_available

    weight = next(model.parameters())
    if cfg.pack_weights == "off" or packing_available(weight.device, weight.dtype):
        return 0  # "on" that cannot run was refused by the config; a quantized model has no nn.Linear left
    return pack_linears(model, 1)


def load_draft(cfg: InferConfig) -> tuple[str, LoadedModel]:
    """A description and the loaded small model (early exit, another model and/or int8)."""
    name = cfg.draft_model or cfg.model
    layers = cfg.draft_num_layers
    if layers is None and name == cfg.model and not cfg.draft_quantize:
        raise InferConfigError("draft_model: set a small model (draft_model), an early exit (draft_num_layers) "
                               "or draft_quantize: true")
    small = load_model(name, layers)
    desc = name + (f" ({layers} layers)" if layers else "")
    if cfg.draft_quantize:
        small.model = quantize_int8(small.model)
        desc += " int8"
    else:
        pack_local(small.model, cfg)
    return desc, small


def prompt_ids(tok: Any, text: str, chat: bool) -> list[int]:
    """Token ids of ``text``, wrapped in the tokenizer's chat template when ``chat`` and it has one."""
    if chat and getattr(tok, "chat_template", None):
        out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    return list(tok(text)["input_ids"])


def runtime_args(cfg: InferConfig) -> list[str]:
    """Worker arguments that place a device process on ``cfg``'s device and precision."""
    return ["--device", cfg.device, "--dtype", cfg.dtype, "--pack-weights", cfg.pack_weights]


def worker_model_args(name: str, num_layers: int | None) -> list[str]:
    """Worker arguments that load model ``name`` (its first ``num_layers`` layers)."""
    return ["--model", name] + (["--num-layers", str(num_layers)] if num_layers else [])


def plan_for(cfg: InferConfig, prompt_len: int, model_config: Any) -> SplitPlan:
    """The split plan: the configured ``cuts`` evaluated, or the planner's choice."""
    problem = problem_from_config(model_config, prompt_len, cfg.max_new_tokens)
    devices, links = cfg.device_specs(), cfg.link_specs()
    if cfg.cuts is not None:
        bounds = stage_bounds(cfg.cuts, problem.num_layers)
        if len(bounds) > len(devices):
            raise InferConfigError(f"cuts: {len(bounds)} stages but only {len(devices)} devices")
        return evaluate_plan(problem, devices, links, [(i, a, b) for i, (a, b) in enumerate(bounds)], cfg.source)
    return plan_split(problem, devices, links, cfg.source)
