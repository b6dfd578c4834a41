"""Collaborative reasoning via federated analytics (paper section IV-A-3).

Every device answers the same query with its own model trained on its own data; only an aggregate
leaves the device: class probabilities (averaged, optionally weighted by the device's sample count) or
a label vote; for generation, each device's answer with its mean log-probability, and the originating
device picks the majority answer (ties broken by score) or the best-scored one.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from fedintel.inference.protocol import Client, ProtocolError, RemoteError

AGGREGATIONS = ("mean_probs", "weighted_probs", "vote")


class AnalyticsError(RuntimeError):
    """Too few devices answered."""


def aggregate(probs: list[torch.Tensor], method: str = "mean_probs", weights: list[float] | None = None) -> torch.Tensor:
    """Combine per-device ``(n, classes)`` probabilities into ``(n,)`` labels."""
    if not probs:
        raise AnalyticsError("no device answered")
    stack = torch.stack(probs)  # (devices, n, classes)
    if method == "mean_probs":
        return stack.mean(0).argmax(-1)
    if method == "weighted_probs":
        w = torch.tensor(weights if weights is not None else [1.0] * len(probs), dtype=stack.dtype)
        return (stack * (w / w.sum()).view(-1, 1, 1)).sum(0).argmax(-1)
    if method == "vote":
        votes = stack.argmax(-1)  # (devices, n)
        counts = torch.nn.functional.one_hot(votes, stack.shape[-1]).sum(0)  # (n, classes)
        # ties go to the class with the higher mean probability
        return (counts.to(stack.dtype) + 1e-3 * stack.mean(0)).argmax(-1)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")


def pick_answer(answers: list[tuple[str, float]], method: str = "majority") -> tuple[str, int]:
    """Pick one generated answer from ``(text, mean log-prob)`` pairs; returns it and its index.

    ``majority``: the most frequent text (normalised for case and spaces), ties to the best score;
    ``score``: the highest mean log-probability.
    """
    if not answers:
        raise AnalyticsError("no device answered")
    if method == "score":
        i = max(range(len(answers)), key=lambda k: answers[k][1])
        return answers[i][0], i
    if method != "majority":
        raise ValueError(f"unknown pick {method!r}; choose majority or score")
    norm = [" ".join(a.lower().split()) for a, _ in answers]
    counts = Counter(norm)
    i = max(range(len(answers)), key=lambda k: (counts[norm[k]], answers[k][1]))
    return answers[i][0], i


@dataclass
class AnalyticsReport:
    """Accuracy of the federated answer and of each device alone, and the bytes that left the devices."""

    federated_accuracy: float
    device_accuracy: dict[str, float]
    bytes_up: int
    seconds: float
    answered: list[str] = field(default_factory=list)

    @property
    def best_single(self) -> float:
        """The best device's accuracy alone."""
        return max(self.device_accuracy.values())


class FederatedClassifier:
    """Asks every device for class probabilities on the same texts and aggregates them."""

    def __init__(self, devices: dict[str, Client], method: str = "mean_probs", min_devices: int = 1) -> None:
        if method not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
        self.devices = devices
        self.method = method
        self.min_devices = min_devices
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(devices)))

    def _ask(self, name: str, texts: list[str]) -> tuple[str, torch.Tensor | None, float]:
        try:
            r = self.devices[name].request("classify", {"texts": texts})
        except (ProtocolError, RemoteError):
            return name, None, 0.0
        return name, r.tensors["probs"], float(r.meta.get("local_samples", 1))

    def evaluate(self, texts: list[str], labels: list[int]) -> AnalyticsReport:
        """Federated and per-device accuracy on labelled ``texts``."""
        t0 = time.perf_counter()
        results = list(self._pool.map(lambda n: self._ask(n, texts), list(self.devices)))
        ok = [(n, p, w) for n, p, w in results if p is not None]
        if len(ok) < self.min_devices:
            raise AnalyticsError(f"only {len(ok)} of {len(self.devices)} devices answered "
                                 f"(need {self.min_devices})")
        y = torch.tensor(labels)
        pred = aggregate([p for _, p, _ in ok], self.method, [w for _, _, w in ok])
        per_device = {n: float((p.argmax(-1) == y).float().mean()) for n, p, _ in ok}
        bytes_up = sum(p.numel() * p.element_size() for _, p, _ in ok)
        return AnalyticsReport(float((pred == y).float().mean()), per_device, bytes_up,
                               time.perf_counter() - t0, [n for n, _, _ in ok])

    def close(self) -> None:
        """Stop the pool and close connections."""
        self._pool.shutdown(wait=True)
        for c in self.devices.values():
            c.close()
