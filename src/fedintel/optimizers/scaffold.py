"""SCAFFOLD: control variates correct each client's drift towards its own optimum.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020 (Algorithm 1, option II). The server keeps ``c`` and each client ``i`` its ``c_i``, both
shaped like the adapter and zero at the start. A client receives ``(w, c)``, runs ``K`` local steps
``y <- y - lr (g - c_i + c)``, and uploads its delta ``y - w`` with ``dc_i = c_i+ - c_i`` where
``c_i+ = c_i - c + (w - y) / (K lr)``. The server adds ``eta`` times the aggregated delta and sets
``c <- c + (1/N) sum_i dc_i`` over the accepted clients (``N``: the clients the node serves).

Local optimizer: with SGD the correction ``- lr (c - c_i)`` is SCAFFOLD's gradient correction exactly. With
AdamW (fedintel's local optimizer) it is applied the same way, as a shift of ``-lr (c - c_i)`` after each
optimizer step, so the control variates (estimated from ``(w - y) / (K lr)``) and the correction are in the
same units, the optimizer's step direction, as OpenFedLLM does; a gradient-scale correction fed through Adam
would be mis-scaled by Adam's normalisation.

State and bytes: ``c`` and every ``c_i`` live in the scheme's state (``{"c", "ci"}`` per aggregation node; the
``c_i`` stand for what clients keep locally), so checkpoints carry them. ``c`` is downloaded with the adapter
and ``dc_i`` uploaded with the delta; both are counted by the network clock. A client commits ``c_i+`` only
when its update is accepted, so a dropped or rejected upload leaves client and server consistent.

Limits (config errors, not silent): synchronous ``fedavg`` and ``clustered`` schemes only (asynchronous
staleness and edge/cloud tiers break the control-variate bookkeeping); aggregation rule ``fedavg`` without DP,
secure aggregation, exact LoRA aggregation or heterogeneous LoRA ranks (the server must see and average every
``dc_i`` in the delta's own coordinates); the local engine (Flower messages do not carry ``c`` yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedintel.optimizers.base import FederatedOptimizer, LocalTerm, OptimizerConfig, add_scaled
from fedintel.optimizers.registry import register_optimizer
from fedintel.types import AdapterState, Update, state_nbytes

if TYPE_CHECKING:
    import torch

    from fedintel.config import ExperimentConfig

DC_KEY = "scaffold_dc"
"""Key of ``dc_i`` in :attr:`Update.extras`."""


class ScaffoldConfig(OptimizerConfig):
    """SCAFFOLD's global step size."""

    name: Literal["scaffold"] = "scaffold"
    eta: float = Field(1.0, gt=0, description="Global step size eta_g on the aggregated delta (1: FedAvg's step).")

    def cross_check(self, cfg: ExperimentConfig) -> None:
        refuse = {
            "federation.scheme": (cfg.federation.scheme, cfg.federation.scheme not in ("fedavg", "clustered")),
            "engine": (cfg.engine, cfg.engine != "local"),
            "aggregation.rule": (cfg.aggregation.rule, cfg.aggregation.rule != "fedavg"),
            "aggregation.lora": (cfg.aggregation.lora, cfg.aggregation.lora != "naive"),
            "privacy.dp": (cfg.privacy.dp, cfg.privacy.dp != "none"),
            "privacy.secure_aggregation": (True, cfg.privacy.secure_aggregation),
            "peft.client_ranks": (getattr(cfg.peft, "client_ranks", None), getattr(cfg.peft, "client_ranks", None) is not None),
            "output.save_client_updates": (True, cfg.output.save_client_updates),
        }
        bad = [f"{field}: {value}" for field, (value, hit) in refuse.items() if hit]
        if bad:
            raise ValueError(
                f"optimizer.name: scaffold cannot serve {bad[0]}; it needs federation.scheme fedavg or clustered, "
                "engine local, aggregation.rule fedavg with lora naive, no privacy.dp, no privacy.secure_aggregation, "
                "no peft.client_ranks and no output.save_client_updates (see fedintel.optimizers.scaffold)"
            )


class DriftCorrection:
    """After each optimizer step: ``y <- y - lr (c - c_i)``."""

    def __init__(self, correction: AdapterState, lr: float) -> None:
        self.correction = correction
        self.lr = lr

    def before_step(self, params: dict[str, torch.Tensor]) -> None:
        pass

    def after_step(self, params: dict[str, torch.Tensor]) -> None:
        for k, p in params.items():
            p.sub_(self.correction[k].to(device=p.device, dtype=p.dtype), alpha=self.lr)


class Scaffold(FederatedOptimizer):
    stateless = False

    def init_state(self, params: AdapterState) -> dict[str, Any]:
        return {"c": {k: t.new_zeros(t.shape) for k, t in params.items()}, "ci": {}}

    def downlink(self, state: dict[str, Any], client_id: int) -> dict[str, AdapterState]:
        c = state["c"]
        ci = state["ci"].get(client_id) or {k: t.new_zeros(t.shape) for k, t in c.items()}
        return {"c": c, "ci": ci}

    def downlink_nbytes(self, state: dict[str, Any]) -> int:
        return state_nbytes(state["c"])  # c_i stays on the client

    def local_term(self, start: AdapterState, extras: dict[str, AdapterState], lr: float) -> LocalTerm | None:
        c, ci = extras["c"], extras["ci"]
        return DriftCorrection({k: c[k] - ci[k] for k in c}, lr)

    def finish_update(self, update: Update, start: AdapterState, extras: dict[str, AdapterState],
                      lr: float) -> Update:
        scale = 1.0 / (update.steps * lr)
        c = extras["c"]
        update.extras = {**update.extras, DC_KEY: {k: -c[k] - scale * update.delta[k].to(c[k].dtype) for k in c}}
        return update

    def step(self, params: AdapterState, delta: AdapterState, state: dict[str, Any],
             updates: Sequence[Update] = (), population: int = 0) -> tuple[AdapterState, dict[str, Any]]:
        eta = self.config.eta  # type: ignore[attr-defined]
        new_params = add_scaled(params, delta, eta)
        c, ci = state["c"], dict(state["ci"])
        if not updates:
            return new_params, state
        n = max(population, len(updates))
        total = {k: t.double() * 0 for k, t in c.items()}
        for u in updates:
            dc = u.extras[DC_KEY]
            old = ci.get(u.client_id) or {k: t.new_zeros(t.shape) for k, t in c.items()}
            ci[u.client_id] = {k: old[k] + dc[k] for k in c}
            for k in c:
                total[k] += dc[k].double()
        new_c = {k: c[k] + (total[k] / n).to(c[k].dtype) for k in c}
        return new_params, {"c": new_c, "ci": ci}


register_optimizer(name="scaffold", config_cls=ScaffoldConfig, optimizer_cls=Scaffold)
