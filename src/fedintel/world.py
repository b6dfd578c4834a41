"""The world of an experiment: base model with its PEFT wrapper, clients' data, and helpers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from peft import PeftModel

from fedintel.config import ConfigError, ExperimentConfig
from fedintel.data.federated import FederatedData, build_federated_data
from fedintel.data.tokenize import TokenizedSet
from fedintel.models.client_model import build_client_model
from fedintel.models.loader import LoadedModel
from fedintel.models.peft_builder import AdapterSlot
from fedintel.network.simulator import WirelessNetwork
from fedintel.runtime import Runtime, resolve_runtime
from fedintel.seeding import derive_seed
from fedintel.training.client import LocalTrainSpec
from fedintel.training.evaluate import evaluate, evaluate_sets
from fedintel.training.flops import ModelShape, train_flops
from fedintel.training.job import client_rank, local_spec
from fedintel.types import AdapterState

log = logging.getLogger(__name__)


__all__ = ["World", "build_world", "derive_seed"]


@dataclass
class World:
    """Everything a scheme needs to train and evaluate clients in this process."""

    cfg: ExperimentConfig
    base: LoadedModel
    peft_model: PeftModel
    slot: AdapterSlot
    data: FederatedData
    shape: ModelShape
    initial_state: AdapterState
    network: WirelessNetwork | None = None

    @property
    def runtime(self) -> Runtime:
        return self.slot.runtime

    @property
    def task(self) -> str:
        return self.cfg.model.task

    @property
    def pad_id(self) -> int:
        return int(self.base.tokenizer.pad_token_id)

    def local_spec(self) -> LocalTrainSpec:
        return local_spec(self.cfg)

    def client_rank(self, client_id: int) -> int | None:
        """The LoRA rank client ``client_id`` trains with (``peft.client_ranks``), or None for full rank."""
        return client_rank(self.cfg, client_id)

    def estimated_flops(self) -> float:
        """FLOPs of one client's local training at full-length sequences (for selection policies)."""
        spec = self.local_spec()
        samples = spec.num_steps(max(1, len(self.data.clients[0].train))) * spec.batch_size
        return train_flops(self.shape, samples * self.cfg.data.max_length, self.cfg.data.max_length)

    def evaluate(self, state: AdapterState, data: TokenizedSet) -> dict[str, float]:
        """Metrics of the adapter ``state`` on ``data`` (capped at ``eval.max_samples``)."""
        self.slot.set(state)
        e = self.cfg.eval
        return evaluate(
            self.peft_model, data, task=self.task, pad_id=self.pad_id, batch_size=e.batch_size,
            max_samples=e.max_samples, runtime=self.runtime,
        )

    def evaluate_sets(self, state: AdapterState, sets: dict[str, TokenizedSet]) -> dict[str, dict[str, float]]:
        """:meth:`evaluate` of each set under one adapter, in shared batches (the per-domain held-out sets)."""
        self.slot.set(state)
        e = self.cfg.eval
        return evaluate_sets(
            self.peft_model, sets, task=self.task, pad_id=self.pad_id, batch_size=e.batch_size,
            max_samples=e.max_samples, runtime=self.runtime,
        )


def build_world(cfg: ExperimentConfig) -> World:
    """Load the model, wrap it with the PEFT method and partition the data, as ``cfg`` says."""
    runtime = resolve_runtime(cfg.runtime)
    cm = build_client_model(cfg, runtime)
    base, peft_model, slot = cm.base, cm.peft_model, cm.slot
    data = build_federated_data(cfg.data, base.tokenizer, cfg.model.task, cfg.federation.num_clients, cfg.federation.seed)
    shape = ModelShape.of(peft_model)
    log.info("%s: %d trainable of %d parameters", cfg.peft.method, shape.num_trainable, shape.num_params)
    network = None
    if cfg.network.enabled:
        try:
            network = WirelessNetwork(
                cfg.network, cfg.federation.num_clients, cfg.federation.seed, model_bytes=4 * shape.num_params
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return World(cfg, base, peft_model, slot, data, shape, slot.get(), network)
