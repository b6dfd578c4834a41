"""Collaborative reasoning via expert models (paper section IV-A-1).

Each neighbouring device serves one expert (for instance a per-cluster adapter from clustered
fine-tuning, merged into the base model with ``--adapter``). The originating device splits a query into
subtasks (sentences), routes each to the best expert and merges the answers in order. Two routers:

* :class:`EmbeddingRouter`: cosine similarity between the subtask's MiniLM embedding and each expert's
  domain centroid (the mean embedding of a few examples of the domain); costs one local encoder pass.
* :class:`LossRouter`: every expert scores the subtask (its mean token loss) and the lowest wins; needs
  no domain examples but one round trip to every expert.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from fedintel.inference.embedding import Encoder
from fedintel.inference.protocol import Client, ProtocolError, RemoteError


class ExpertError(RuntimeError):
    """An expert could not answer; the message names it."""


def split_subtasks(query: str) -> list[str]:
    """Split a query into sentence-like subtasks (``?``, ``!``, ``.`` or a newline end one)."""
    parts = [p.strip() for p in re.split(r"(?<=[?!.])\s+|\n+", query)]
    return [p for p in parts if p] or [query.strip()]


@dataclass(frozen=True)
class EmbeddingStats:
    """What a client sends for routing: the sum of its texts' unit embeddings and their count, never a text.

    Summed over the clients of an expert they give its centroid: the same vector as embedding all their
    texts in one place."""

    total: torch.Tensor
    count: int

    @classmethod
    def of(cls, encoder: Encoder, texts: list[str]) -> EmbeddingStats:
        """This client's statistics over its own ``texts`` (computed where the texts are)."""
        if not texts:
            raise ValueError("routing statistics need at least one text")
        return cls(encoder.embed(texts).sum(0), len(texts))

    def __add__(self, other: EmbeddingStats) -> EmbeddingStats:
        return EmbeddingStats(self.total + other.total, self.count + other.count)

    def centroid(self) -> torch.Tensor:
        """The unit direction of the mean embedding."""
        return torch.nn.functional.normalize(self.total / self.count, dim=0)


class EmbeddingRouter:
    """Routes by cosine similarity to each expert's domain centroid."""

    def __init__(self, encoder: Encoder, domain_examples: dict[str, list[str]]) -> None:
        if not domain_examples or any(not v for v in domain_examples.values()):
            raise ValueError("every expert needs at least one example text of its domain")
        self._set(encoder, {n: EmbeddingStats.of(encoder, v) for n, v in domain_examples.items()})

    @classmethod
    def from_statistics(cls, encoder: Encoder, stats: dict[str, EmbeddingStats]) -> EmbeddingRouter:
        """A router from each expert's aggregated client statistics (see :class:`EmbeddingStats`)."""
        if not stats or any(s.count < 1 for s in stats.values()):
            raise ValueError("every expert needs statistics over at least one text")
        router = cls.__new__(cls)
        router._set(encoder, stats)
        return router

    def _set(self, encoder: Encoder, stats: dict[str, EmbeddingStats]) -> None:
        self.encoder = encoder
        self.names = list(stats)
        self.centroids = torch.stack([s.centroid() for s in stats.values()])

    def scores(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), experts)`` cosine similarities."""
        return self.encoder.embed(texts) @ self.centroids.T

    def route(self, texts: list[str]) -> list[str]:
        """The expert name for each text."""
        return [self.names[int(i)] for i in self.scores(texts).argmax(-1)]


class LossRouter:
    """Routes each text to the expert with the lowest loss on it (asks every expert)."""

    def __init__(self, experts: dict[str, Client]) -> None:
        self.experts = experts
        self.names = list(experts)

    def scores(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), experts)`` negative mean token losses (higher is better)."""
        cols = []
        for name in self.names:
            try:
                loss = self.experts[name].request("score", {"texts": texts}).tensors["loss"]
            except (ProtocolError, RemoteError) as err:
                raise ExpertError(f"expert {name} could not score: {err}") from None
            cols.append(-loss)
        return torch.stack(cols, dim=1)

    def route(self, texts: list[str]) -> list[str]:
        """The expert name for each text."""
        return [self.names[int(i)] for i in self.scores(texts).argmax(-1)]


def routing_accuracy(router: EmbeddingRouter | LossRouter, texts: list[str], domains: list[str]) -> float:
    """Share of texts routed to the expert of their known domain."""
    routed = router.route(texts)
    return sum(r == d for r, d in zip(routed, domains, strict=True)) / max(1, len(texts))


@dataclass
class ExpertAnswer:
    """The merged answer and, per subtask, the expert that answered and its text."""

    text: str
    parts: list[tuple[str, str, str]] = field(default_factory=list)  # (subtask, expert, answer)
    seconds: float = 0.0
    route_s: float = 0.0


class ExpertEnsemble:
    """Splits queries, routes subtasks to expert devices in parallel, merges their answers."""

    def __init__(self, experts: dict[str, Client], router: EmbeddingRouter | LossRouter,
                 max_new_tokens: int = 32) -> None:
        missing = set(router.names) - set(experts)
        if missing:
            raise ValueError(f"the router knows experts with no device: {sorted(missing)}")
        self.experts = experts
        self.router = router
        self.max_new_tokens = max_new_tokens
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(experts)))

    def _ask(self, name: str, subtask: str) -> str:
        try:
            reply = self.experts[name].request("generate", {"prompt": subtask, "max_new_tokens": self.max_new_tokens})
        except (ProtocolError, RemoteError) as err:
            raise ExpertError(f"expert {name} failed on {subtask[:40]!r}: {err}") from None
        return str(reply.meta["text"])

    def answer(self, query: str) -> ExpertAnswer:
        """Answer ``query``: one subtask per sentence, each on its expert, merged in order."""
        t0 = time.perf_counter()
        subtasks = split_subtasks(query)
        routed = self.router.route(subtasks)
        route_s = time.perf_counter() - t0
        answers = list(self._pool.map(self._ask, routed, subtasks))
        merged = "\n".join(f"[{e}] {a.strip()}" for e, a in zip(routed, answers, strict=True))
        return ExpertAnswer(merged, list(zip(subtasks, routed, answers, strict=True)), time.perf_counter() - t0, route_s)

    def close(self) -> None:
        """Stop the thread pool and close the connections."""
        self._pool.shutdown(wait=True)
        for c in self.experts.values():
            c.close()
