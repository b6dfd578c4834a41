"""The model every client trains: the base placed on the run's runtime, wrapped with its PEFT method.

One builder for the local engine's world and Flower's ClientApp, so both train exactly the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PeftModel

from fedintel.config import ExperimentConfig
from fedintel.models.loader import LoadedModel, load_base_model
from fedintel.models.peft_builder import AdapterSlot, build_peft_model
from fedintel.runtime import Runtime
from fedintel.seeding import derive_seed


@dataclass
class ClientModel:
    """A base model, its PEFT wrapper and the slot that swaps adapters in and out."""

    base: LoadedModel
    peft_model: PeftModel
    slot: AdapterSlot


def build_client_model(cfg: ExperimentConfig, runtime: Runtime) -> ClientModel:
    """Load ``cfg.model`` on ``runtime`` and add a fresh adapter (the same one for a given run seed)."""
    base = load_base_model(cfg.model, runtime)
    peft_model = build_peft_model(base.model, cfg.peft, cfg.model.task, seed=derive_seed(cfg.federation.seed, 1),
                                  tokenizer=base.tokenizer)
    peft_model.eval()
    return ClientModel(base, peft_model, AdapterSlot(peft_model, runtime))
