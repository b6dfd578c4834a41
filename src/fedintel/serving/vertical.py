"""Serving over a draft/target pair or a cascade: the schedulers of :class:`~fedintel.serving.backends.PairPath`.

Each pair path runs :mod:`fedintel.inference.speculative` or :mod:`fedintel.inference.cascade` as they are,
over its two chains of device processes, for one request at a time: both models advance one sequence in
turns (draft, then verification; small answer, then maybe the large one), so requests are not batched
across rows here as on single and split paths. Run several pair paths for concurrency.

- :class:`SpeculativeScheduler`: the draft proposes ``k`` tokens, the target verifies them in one pass;
  tokens stream as each verification commits them and are exactly the target's greedy tokens, so the path
  serves the target's model id beside single and split paths and requests fail over between them (a
  request continues from the tokens it has, as on any path).
- :class:`CascadeScheduler`: the small model answers; below ``threshold`` confidence the large model answers
  instead. The answer is known only once the decision is made, so its tokens arrive together.

The response's ``fedintel`` field says what happened: for speculative decoding the draft and target
devices, drafted and accepted tokens, the acceptance rate and the target calls; for a cascade the
confidence, the threshold, whether it escalated and which devices answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fedintel.inference.cascade import Cascade
from fedintel.inference.speculative import speculative_generate
from fedintel.serving.backends import PairPath, PathLM, PathRefused
from fedintel.serving.scheduler import GenRequest, Scheduler


class PairScheduler(Scheduler):
    """One request at a time over a :class:`PairPath`; :meth:`_generate` is the algorithm."""

    path: PairPath

    def __init__(self, path: PairPath, on_failure: Callable[[Scheduler, list[GenRequest], str], None],
                 eos_id: int | None) -> None:
        self.eos_id = eos_id  # the id the inference algorithms stop at; every id of req.eos_ids ends a request
        super().__init__(path, 1, on_failure)

    def _turn(self) -> None:
        with self.cond:
            if not self.pending:
                return
            req = self.pending.popleft()
            self.active = [req]  # held in the same step: a failure from here hands it over with its tokens
        end = None
        if not req.cancelled.is_set():
            small, large = PathLM(self.path.small), PathLM(self.path.large)
            t0 = time.perf_counter()
            if not req.generated and not req.usage.prefill_s:
                req.usage.queue_s = t0 - req.submitted
            try:
                end = self._generate(req, small, large)
            except PathRefused as err:
                req._finish("error", (400, str(err)))
            req.usage.prefill_s += small.prefill_s + large.prefill_s
            req.usage.decode_s += small.decode_s + large.decode_s
            req.usage.add_stages(small.stage_s + large.stage_s)
            req.usage.steps += large.steps
            req.usage.batch_sum += large.steps
        # finished only now, with its usage complete (the response is built from it at once)
        req._finish("done", "cancelled" if req.cancelled.is_set() else end or "stop")
        with self.cond:
            self.active = []

    def _commit(self, req: GenRequest, tokens: list[int]) -> str | None:
        """Stream ``tokens`` to ``req`` up to its end; the finish reason, once reached."""
        for tok in tokens:
            end = self._append(req, tok)
            if end is not None:
                return end
        return None

    def _generate(self, req: GenRequest, small: PathLM, large: PathLM) -> str | None:
        """Stream ``req``'s tokens (with :meth:`_commit`) and set ``req.usage.extra``; the finish reason (None:
        the algorithm stopped at its own end of sequence). A dead device raises :class:`PathDown`."""
        raise NotImplementedError


class SpeculativeScheduler(PairScheduler):
    """Speculative decoding (Leviathan et al., 2023): the target's greedy tokens, streamed per verification."""

    def _generate(self, req: GenRequest, small: PathLM, large: PathLM) -> str | None:
        end: list[str] = []

        def commit(tokens: list[int]) -> bool:
            reason = self._commit(req, tokens)
            if reason is not None:
                end.append(reason)
            return not (end or req.cancelled.is_set())  # else stop drafting: the client has it all

        res = speculative_generate(small, large, req.prompt_ids + req.generated, req.max_tokens - len(req.generated),
                                   self.path.spec.k, self.eos_id, on_tokens=commit)
        rate = res.acceptance_rate
        req.usage.extra = {
            "draft_devices": self.path.small.device_names, "target_devices": self.path.large.device_names,
            "k": self.path.spec.k, "drafted": res.drafted, "accepted": res.accepted,
            "acceptance_rate": round(rate, 4) if rate == rate else None, "target_calls": res.rounds,
        }
        return end[0] if end else None


class CascadeScheduler(PairScheduler):
    """A confidence cascade (paper section IV-B): the small model's answer, or the large one's when unsure."""

    def _generate(self, req: GenRequest, small: PathLM, large: PathLM) -> str | None:
        spec = self.path.spec
        cascade = Cascade(small, large, spec.threshold, spec.confidence, req.max_tokens - len(req.generated),
                          self.eos_id)
        answer = cascade.answer(req.prompt_ids + req.generated)
        answered_by = self.path.small if answer.served_locally else self.path.large
        req.usage.extra = {
            "small_devices": self.path.small.device_names, "large_devices": self.path.large.device_names,
            "escalated": not answer.served_locally, "answered_by": answered_by.device_names,
            "confidence": round(answer.confidence, 4), "threshold": spec.threshold,
            "confidence_method": spec.confidence,
        }
        return self._commit(req, answer.tokens)
