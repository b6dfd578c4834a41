"""Speculative decoding across the cloud-edge-end hierarchy (Leviathan et al., 2023; Chen et al., 2023).

A small *draft* model on the end device proposes ``k`` tokens greedily; the large *target* model (on an
edge server, or split across devices) checks all of them in one forward pass and keeps the longest
prefix it agrees with, plus its own next token. With greedy decoding on both sides the output is exactly
the target's greedy output; each round trip to the target yields between 1 and ``k + 1`` tokens.

Both models are :class:`~fedintel.inference.stage.IncrementalLM`: a model in this process, a remote
device or a :class:`~fedintel.inference.split.SplitPipeline`. Their KV caches are rolled back with
``truncate`` when drafts are rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedintel.inference.stage import IncrementalLM, check_context


@dataclass
class SpeculativeResult:
    """Tokens and what it took: rounds with the target, drafted and accepted tokens, seconds."""

    tokens: list[int]
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0
    total_s: float = 0.0
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Share of drafted tokens the target accepted."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """Tokens produced per target call (1 means no gain over plain decoding)."""
        return len(self.tokens) / self.rounds if self.rounds else float("nan")


def speculative_generate(
    draft: IncrementalLM, target: IncrementalLM, prompt_ids: list[int], max_new_tokens: int, k: int = 4,
    eos_token_id: int | None = None, on_tokens: Callable[[list[int]], bool | None] | None = None,
) -> SpeculativeResult:
    """Greedy speculative decoding; returns exactly the target's greedy continuation (up to EOS).

    ``on_tokens``, if given, receives the tokens each target call commits as soon as they are known (a
    server streams them); when it returns ``False`` decoding stops there (the caller has what it needs)."""
    if k < 1:
        raise ValueError(f"k (draft tokens per round) must be >= 1, got {k}")
    check_context(target, len(prompt_ids), max_new_tokens + k)
    check_context(draft, len(prompt_ids), max_new_tokens + k)
    res = SpeculativeResult([])
    t_start = time.perf_counter()
    d_sid, t_sid = draft.open_session(), target.open_session()
    try:
        seq = list(prompt_ids)
        d_len = t_len = 0  # positions cached by each model
        # the target's first token comes from the prompt alone
        t0 = time.perf_counter()
        out = target.step(t_sid, torch.tensor([seq]), 0, 1)
        res.target_s += time.perf_counter() - t0
        res.rounds += 1
        t_len = len(seq)
        seq.append(int(out.argmax[-1]))
        new = [seq[-1]]
        going = on_tokens is None or on_tokens([seq[-1]]) is not False
        while going and len(new) < max_new_tokens and new[-1] != eos_token_id:
            kk = min(k, max_new_tokens - len(new))
            # draft kk tokens
            t0 = time.perf_counter()
            drafts: list[int] = []
            for _ in range(kk):
                feed = (seq + drafts)[d_len:]
                o = draft.step(d_sid, torch.tensor([feed]), d_len, 1)
                d_len += len(feed)
                drafts.append(int(o.argmax[-1]))
                if drafts[-1] == eos_token_id:
                    break
            res.draft_s += time.perf_counter() - t0
            res.drafted += len(drafts)
            # verify: the target scores the uncached tail and every draft in one pass
            t0 = time.perf_counter()
            feed = (seq + drafts)[t_len:]
            o = target.step(t_sid, torch.tensor([feed]), t_len, len(drafts) + 1)
            res.target_s += time.perf_counter() - t0
            res.rounds += 1
            t_len += len(feed)
            greedy = [int(x) for x in o.argmax]
            m = 0
            while m < len(drafts) and drafts[m] == greedy[m]:
                m += 1
            res.accepted += m
            res.accepted_per_round.append(m)
            accepted = drafts[:m] + [greedy[m]]
            # keep caches consistent with the committed sequence (the last token is never cached yet)
            committed = len(seq) + m
            if t_len > committed:
                target.truncate(t_sid, committed)
                t_len = committed
            if d_len > committed:
                draft.truncate(d_sid, committed)
                d_len = committed
            before = len(new)
            for tok in accepted:
                seq.append(tok)
                new.append(tok)
                if tok == eos_token_id or len(new) >= max_new_tokens:
                    break
            going = on_tokens is None or on_tokens(new[before:]) is not False
        res.tokens = new[:max_new_tokens]
    finally:
        draft.close_session(d_sid)
        target.close_session(t_sid)
    res.total_s = time.perf_counter() - t_start
    return res
