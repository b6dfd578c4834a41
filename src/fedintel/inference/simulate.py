"""Simulated latency of each collaborative-reasoning mode from device FLOP/s and link rates.

The measured numbers come from real processes on this machine; these are what the same work would take
on the configured devices and links (compute = FLOPs / FLOP/s, transfer = latency + 8 bytes / rate), so a
run reports both. FLOPs of a model come from its config via :func:`fedintel.inference.planner.problem_from_config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedintel.inference.planner import FRAME_OVERHEAD_BYTES, DeviceSpec, LinkSpec, problem_from_config


@dataclass(frozen=True)
class ModelCost:
    """FLOPs of a causal LM per forward pass: ``per_token`` at context ``ctx`` is ``a + b * ctx``."""

    flops_per_token: float
    flops_per_ctx: float
    head_flops: float

    @classmethod
    def of(cls, config: object) -> ModelCost:
        """From a Hugging Face config."""
        one = problem_from_config(config, prompt_tokens=1, new_tokens=1)
        two = problem_from_config(config, prompt_tokens=2, new_tokens=1)
        a1, a2 = sum(one.layer_flops), sum(two.layer_flops)  # 1 token at ctx 1; 2 tokens at ctx 2
        b = (a2 - 2 * a1) / 2.0  # a2 = 2 (base + 2b'), a1 = base + b'; solve per-ctx slope
        base = a1 - b
        return cls(base, b, one.last_flops)

    def pass_flops(self, tokens: int, ctx: int, logits: int = 1) -> float:
        """FLOPs of one forward pass over ``tokens`` new tokens at context ``ctx``, ``logits`` positions out."""
        return tokens * (self.flops_per_token + self.flops_per_ctx * ctx) + logits * self.head_flops

    def generate_flops(self, prompt: int, new: int) -> float:
        """FLOPs of greedy generation of ``new`` tokens after a ``prompt``-token prompt."""
        total = self.pass_flops(prompt, prompt)
        for t in range(1, new):
            total += self.pass_flops(1, prompt + t)
        return total


def message_s(link: LinkSpec, payload_bytes: float) -> float:
    """One message's modelled seconds on ``link``."""
    return link.transfer_s(payload_bytes + FRAME_OVERHEAD_BYTES)


def remote_generate_s(cost: ModelCost, device: DeviceSpec, link: LinkSpec, prompt: int, new: int) -> float:
    """Send the prompt, generate remotely, receive the answer."""
    return message_s(link, 8 * prompt) + device.compute_s(cost.generate_flops(prompt, new)) + message_s(link, 8 * new)


def local_generate_s(cost: ModelCost, device: DeviceSpec, prompt: int, new: int) -> float:
    """Generate on the device itself."""
    return device.compute_s(cost.generate_flops(prompt, new))


def speculative_s(draft: ModelCost, target: ModelCost, end: DeviceSpec, edge: DeviceSpec, link: LinkSpec,
                  prompt: int, accepted_per_round: list[int], k: int) -> float:
    """Speculative decoding as run by :func:`~fedintel.inference.speculative.speculative_generate`: a
    prefill round trip, then per round ``k`` draft steps locally and one verification pass remotely."""
    ctx = prompt
    t = message_s(link, 8 * prompt) + edge.compute_s(target.pass_flops(prompt, prompt)) + message_s(link, 8)
    ctx += 1
    for m in accepted_per_round:
        t += sum(end.compute_s(draft.pass_flops(1, ctx + i)) for i in range(k))
        t += message_s(link, 8 * (k + 1)) + edge.compute_s(target.pass_flops(k + 1, ctx + k, logits=k + 1))
        t += message_s(link, 8 * (k + 1))
        ctx += m + 1
    return t


def cascade_s(small: ModelCost, large: ModelCost, end: DeviceSpec, edge: DeviceSpec, link: LinkSpec, prompt: int,
              new: int, escalated: bool) -> float:
    """One query through the cascade: the small model always runs; the large one if escalated."""
    t = local_generate_s(small, end, prompt, new)
    return t + (remote_generate_s(large, edge, link, prompt, new) if escalated else 0.0)
