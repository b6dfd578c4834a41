"""Cloud-edge-end confidence cascade (paper section IV-B).

The end device answers with its small model; if the answer's confidence is below ``threshold`` the query
is escalated to the large model at the edge or in the cloud (any
:class:`~fedintel.inference.stage.IncrementalLM`: a remote device or a split pipeline). Confidence of a
generated answer: the geometric mean of its tokens' probabilities (``mean_prob``), the least likely
token's probability (``min_prob``) or the first token's (``first_prob``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from fedintel.inference.stage import IncrementalLM, greedy_generate

CONFIDENCE_METHODS = ("mean_prob", "min_prob", "first_prob")


def confidence(logits: list[torch.Tensor], tokens: list[int], method: str = "mean_prob") -> float:
    """Confidence in ``tokens`` given the logits that chose them."""
    if not tokens:
        return 0.0
    logp = [float(torch.log_softmax(lg.float(), -1)[t]) for lg, t in zip(logits, tokens, strict=True)]
    if method == "mean_prob":
        return math.exp(sum(logp) / len(logp))
    if method == "min_prob":
        return math.exp(min(logp))
    if method == "first_prob":
        return math.exp(logp[0])
    raise ValueError(f"unknown confidence method {method!r}; choose one of {', '.join(CONFIDENCE_METHODS)}")


@dataclass
class CascadeAnswer:
    """One query's answer, who served it, the small model's confidence and the seconds spent."""

    tokens: list[int]
    served_locally: bool
    confidence: float
    local_s: float
    remote_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Wall time of the query."""
        return self.local_s + self.remote_s


@dataclass
class CascadeReport:
    """A batch through the cascade compared with always asking the large model."""

    answers: list[CascadeAnswer] = field(default_factory=list)
    large_tokens: list[list[int]] = field(default_factory=list)
    large_s: list[float] = field(default_factory=list)

    @property
    def local_fraction(self) -> float:
        """Share of queries served by the end device."""
        return sum(a.served_locally for a in self.answers) / max(1, len(self.answers))

    @property
    def agreement(self) -> float:
        """Share of answers identical to the large model's (output quality relative to always-large)."""
        if not self.large_tokens:
            return float("nan")
        same = sum(a.tokens == b for a, b in zip(self.answers, self.large_tokens, strict=True))
        return same / max(1, len(self.answers))

    @property
    def latency_ratio(self) -> float:
        """Cascade wall time / always-large wall time (below 1: time saved)."""
        big = sum(self.large_s)
        return sum(a.total_s for a in self.answers) / big if big else float("nan")


class Cascade:
    """Small model first, large model when the small one is unsure."""

    def __init__(self, small: IncrementalLM, large: IncrementalLM, threshold: float = 0.5,
                 method: str = "mean_prob", max_new_tokens: int = 16, eos_token_id: int | None = None) -> None:
        if method not in CONFIDENCE_METHODS:
            raise ValueError(f"unknown confidence method {method!r}; choose one of {', '.join(CONFIDENCE_METHODS)}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {threshold}")
        self.small, self.large = small, large
        self.threshold = threshold
        self.method = method
        self.max_new_tokens = max_new_tokens
        self.eos_token_id = eos_token_id

    def answer(self, prompt_ids: list[int]) -> CascadeAnswer:
        """Answer one prompt, escalating when the small model's confidence is below the threshold."""
        t0 = time.perf_counter()
        local = greedy_generate(self.small, prompt_ids, self.max_new_tokens, self.eos_token_id, keep_logits=True)
        conf = confidence(local.logits, local.tokens, self.method)
        local_s = time.perf_counter() - t0
        if conf >= self.threshold:
            return CascadeAnswer(local.tokens, True, conf, local_s)
        t1 = time.perf_counter()
        remote = greedy_generate(self.large, prompt_ids, self.max_new_tokens, self.eos_token_id)
        return CascadeAnswer(remote.tokens, False, conf, local_s, time.perf_counter() - t1)

    def run(self, prompts: list[list[int]], compare_with_large: bool = True) -> CascadeReport:
        """Every prompt through the cascade, and (if asked) through the large model alone for reference."""
        rep = CascadeReport()
        for p in prompts:
            rep.answers.append(self.answer(p))
            if compare_with_large:
                t0 = time.perf_counter()
                rep.large_tokens.append(greedy_generate(self.large, p, self.max_new_tokens, self.eos_token_id).tokens)
                rep.large_s.append(time.perf_counter() - t0)
        return rep
