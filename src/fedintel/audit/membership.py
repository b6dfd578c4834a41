"""Membership inference by loss threshold: does the adapter remember a client's training examples?

Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", IEEE CSF 2018. The attacker guesses "member" when the model's loss on an example is below a
threshold; sweeping the threshold gives an ROC curve, and its area (AUC) is the attack's success:
0.5 means members and unseen examples look alike (nothing to infer), 1.0 means every training example has a
lower loss than every unseen one.

:func:`membership_score` compares a client's training examples with held-out examples from the same
distribution (the clients' held-out splits, which no client trains on). After exact unlearning the forgotten
client's examples are unseen data, so their score returns to the unseen level (AUC about 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.runtime import CPU, Runtime
from fedintel.training.evaluate import example_loss_sums
from fedintel.types import AdapterState

if TYPE_CHECKING:
    from fedintel.world import World


@dataclass(frozen=True)
class MembershipScore:
    """The loss-threshold attack on one set of candidate members against held-out examples.

    ``auc`` is P(loss of a random member < loss of a random non-member) (ties count one half): 0.5 is the
    level of unseen data. ``gap`` is mean non-member loss minus mean member loss (nats; > 0 when the model
    fits the members better), ``gap_z`` the same in standard errors (Welch). ``members``/``nonmembers`` are
    the example counts.
    """

    auc: float
    gap: float
    member_loss: float
    nonmember_loss: float
    members: int
    nonmembers: int
    gap_se: float = float("nan")

    @property
    def gap_z(self) -> float:
        """``gap / gap_se``: about N(0, 1) for unseen data, large and positive for remembered data."""
        return self.gap / self.gap_se if self.gap_se > 0 else float("nan")

    @property
    def auc_std(self) -> float:
        """Standard error of the AUC when members and non-members are exchangeable (Hanley-McNeil at 0.5)."""
        m, n = self.members, self.nonmembers
        return float(np.sqrt((m + n + 1) / (12.0 * m * n))) if m and n else float("nan")


@torch.inference_mode()
def example_losses(
    model: torch.nn.Module, data: TokenizedSet, *, task: str, pad_id: int, batch_size: int = 16,
    max_samples: int | None = None, runtime: Runtime = CPU,
) -> np.ndarray:
    """Per-example loss (nats) of ``model``: mean next-token cross-entropy (causal LM) or cross-entropy of
    the label (classification), for the first ``max_samples`` examples of ``data``."""
    n = len(data) if max_samples is None else min(len(data), max_samples)
    model.eval()
    out: list[float] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        with runtime.autocast():
            sums, counts, _ = example_loss_sums(model, runtime.to_device(collate(data, idx, pad_id, task)), task)
        out.extend((sums / counts.clamp(min=1)).tolist())
    return np.asarray(out, dtype=np.float64)


def loss_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the loss-threshold attack: P(member loss < non-member loss), ties counted one half.

    Equals the Mann-Whitney U statistic divided by ``len(members) * len(nonmembers)``.
    """
    m = np.asarray(member_losses, dtype=np.float64)[:, None]
    n = np.asarray(nonmember_losses, dtype=np.float64)[None, :]
    if m.size == 0 or n.size == 0:
        raise ValueError("membership AUC needs at least one member and one non-member example")
    return float((m < n).mean() + 0.5 * (m == n).mean())


def score_losses(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> MembershipScore:
    """The :class:`MembershipScore` of two arrays of per-example losses."""
    return MembershipScore(
        auc=loss_auc(member_losses, nonmember_losses),
        gap=float(np.mean(nonmember_losses) - np.mean(member_losses)),
        member_loss=float(np.mean(member_losses)),
        nonmember_loss=float(np.mean(nonmember_losses)),
        members=len(member_losses),
        nonmembers=len(nonmember_losses),
        gap_se=float(np.sqrt(np.var(member_losses, ddof=1) / len(member_losses)
                             + np.var(nonmember_losses, ddof=1) / len(nonmember_losses)))
        if len(member_losses) > 1 and len(nonmember_losses) > 1 else float("nan"),
    )


def held_out(world: World) -> TokenizedSet:
    """Every client's held-out split pooled: unseen examples drawn like the training shards.

    No client trains on its eval split, and (for ``iid`` partitions) the splits come from the same
    distribution as every shard, so they are the right non-members. Falls back to the global held-out set
    when ``data.eval_fraction`` is 0.
    """
    ids: list[list[int]] = []
    labels: list[int] | None = [] if world.task == "classification" else None
    for c in world.data.clients:
        ids += c.eval.input_ids
        if labels is not None:
            labels += list(c.eval.labels or [])
    return TokenizedSet(ids, labels) if ids else world.data.global_eval


def membership_score(
    world: World, state: AdapterState, members: TokenizedSet, nonmembers: TokenizedSet | None = None,
    max_samples: int | None = None,
) -> MembershipScore:
    """Attack the adapter ``state`` in ``world``: ``members`` (e.g. a client's training shard) against
    ``nonmembers`` (default: :func:`held_out`, the clients' pooled eval splits)."""
    nonmembers = held_out(world) if nonmembers is None else nonmembers
    world.slot.set(state)
    kw = {"task": world.task, "pad_id": world.pad_id, "batch_size": world.cfg.eval.batch_size,
          "max_samples": max_samples, "runtime": world.runtime}
    return score_losses(example_losses(world.peft_model, members, **kw),
                        example_losses(world.peft_model, nonmembers, **kw))


def client_membership(world: World, state: AdapterState, client_id: int) -> MembershipScore:
    """Membership score of ``client_id``'s training examples under ``state`` (vs :func:`held_out`)."""
    if not 0 <= client_id < len(world.data.clients):
        raise ValueError(f"client {client_id} is not in this run (ids 0..{len(world.data.clients) - 1})")
    return membership_score(world, state, world.data.clients[client_id].train)


def run_membership(run_dir: Path, client_id: int, world: World | None = None) -> MembershipScore:
    """Membership score of ``client_id``'s training data under the final global adapter of a run directory.

    ``world`` (built from the run's config) can be passed to reuse a loaded model; the client's data shard
    depends only on the data section, the number of clients and the seed, so one world serves a run and its
    unlearned copies.
    """
    from fedintel.config import load_config
    from fedintel.tracking.checkpoint import latest_checkpoint
    from fedintel.world import build_world

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint; is it a fedintel run directory?")
    world = world or build_world(load_config(run_dir / "config.yaml"))
    return client_membership(world, ckpt["state"]["global"], client_id)
