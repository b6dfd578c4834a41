"""Client mods: what a client does to its data before local training and to its update before upload.

After Flower's client mods (``flwr.client.mod``: ``LocalDpMod``, ``fixedclipping_mod``): a cross-cutting
concern on the client (local DP noise, an evaluation attack) is a small callable around the training step,
not a branch inside it. A run's mods are declared once (:func:`fedintel.trust.build_client_mods`) and every
engine applies them the same way, through :class:`ClientMods`: the local, batched and parallel engines and the
Flower ClientApp (:mod:`fedintel.training.job` calls them around :func:`~fedintel.training.client.train_local`).

Mods must be picklable (module-level classes holding plain values): the parallel engine ships them to its
worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedintel.data.tokenize import TokenizedSet
from fedintel.types import TrainJob, Update

UpdateMod = Callable[[Update, TrainJob], Update]
"""``(update, job) -> update``: transforms what a client sends (after training, before upload)."""

DataMod = Callable[[int, TokenizedSet], TokenizedSet]
"""``(client_id, training shard) -> shard``: what the client trains on instead of its shard (never mutates it)."""


@dataclass(frozen=True)
class ClientMods:
    """The data mods and update mods every client applies, in order (the first mod runs first)."""

    data: tuple[DataMod, ...] = ()
    update: tuple[UpdateMod, ...] = ()

    def train_data(self, client_id: int, data: TokenizedSet) -> TokenizedSet:
        """The shard client ``client_id`` trains on: ``data`` after every data mod."""
        for mod in self.data:
            data = mod(client_id, data)
        return data

    def finish(self, update: Update, job: TrainJob) -> Update:
        """The update the client uploads: ``update`` after every update mod."""
        for mod in self.update:
            update = mod(update, job)
        return update

    def __add__(self, other: ClientMods) -> ClientMods:
        """These mods, then ``other``'s."""
        return ClientMods(self.data + other.data, self.update + other.update)


NO_MODS = ClientMods()
"""A client that trains on its own shard and uploads its honest update."""
