"""Simulated latency of each collaborative-reasoning mode from device FLOP/s and link rates.

The measured numbers come from real processes on this machine; these are what the same work would take
on the configured devices and links, so a run reports both. A forward pass takes the longer of its FLOPs
over the device's FLOP/s and its weight bytes over the device's memory bandwidth (decoding one token
reads every weight once, so verifying ``k`` drafted tokens costs about as much as generating one: the
reason speculative decoding can pay); a message takes latency + 8 bytes / rate. FLOPs of a model come from its config via :func:`fedintel.inference.planner.problem_from_config`.
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
    weight_bytes: float = 0.0

    @classmethod
    def of(cls, config: object, bytes_per_weight: float = 4.0) -> ModelCost:
        """From a Hugging Face config; ``bytes_per_weight`` 4 for fp32, 1 for int8."""
        one = problem_from_config(config, prompt_tokens=1, new_tokens=1, dtype_bytes=4)
        two = problem_from_config(config, prompt_tokens=2, new_tokens=1, dtype_bytes=4)
        a1, a2 = sum(one.layer_flops), sum(two.layer_flops)  # 1 token at ctx 1; 2 tokens at ctx 2
        b = (a2 - 2 * a1) / 2.0  # a2 = 2 (base + 2b'), a1 = base + b'; solve per-ctx slope
        base = a1 - b
        params = one.last_flops / 2 + base / 2  # LM head + layer weights (the embedding is a lookup)
        return cls(base, b, one.last_flops, params * bytes_per_weight)

    def pass_s(self, device: DeviceSpec, tokens: int, ctx: int, logits: int = 1) -> float:
        """Seconds of one forward pass on ``device``."""
        return device.compute_s(self.pass_flops(tokens, ctx, logits), self.weight_bytes)

    def pass_flops(self, tokens: int, ctx: int, logits: int = 1) -> float:
        """FLOPs of one forward pass over ``tokens`` new tokens at context ``ctx``, ``logits`` positions out."""
        return tokens * (self.flops_per_token + self.flops_per_ctx * ctx) + logits * self.head_flops

    def generate_s(self, device: DeviceSpec, prompt: int, new: int) -> float:
        """Seconds of greedy generation of ``new`` tokens after a ``prompt``-token prompt on ``device``."""
        return self.pass_s(device, prompt, prompt) + sum(self.pass_s(device, 1, prompt + t) for t in range(1, new))


def message_s(link: LinkSpec, payload_bytes: float) -> float:
    """One message's modelled seconds on ``link``."""
    return link.transfer_s(payload_bytes + FRAME_OVERHEAD_BYTES)


def remote_generate_s(cost: ModelCost, device: DeviceSpec, link: LinkSpec, prompt: int, new: int) -> float:
    """Send the prompt, generate remotely, receive the answer."""
    return message_s(link, 8 * prompt) + cost.generate_s(device, prompt, new) + message_s(link, 8 * new)


def local_generate_s(cost: ModelCost, device: DeviceSpec, prompt: int, new: int) -> float:
    """Generate on the device itself."""
    return cost.generate_s(device, prompt, new)


def speculative_s(draft: ModelCost, target: ModelCost, end: DeviceSpec, edge: DeviceSpec, link: LinkSpec,
                  prompt: int, accepted_per_round: list[int], k: int) -> float:
    """Speculative decoding as run by :func:`~fedintel.inference.speculative.speculative_generate`: a
    prefill round trip, then per round ``k`` draft steps locally and one verification pass remotely."""
    ctx = prompt
    t = message_s(link, 8 * prompt) + target.pass_s(edge, prompt, prompt) + message_s(link, 8)
    ctx += 1
    for m in accepted_per_round:
        t += sum(draft.pass_s(end, 1, ctx + i) for i in range(k))
        t += message_s(link, 8 * (k + 1)) + target.pass_s(edge, k + 1, ctx + k, logits=k + 1)
        t += message_s(link, 8 * (k + 1))
        ctx += m + 1
    return t


def cascade_s(small: ModelCost, large: ModelCost, end: DeviceSpec, edge: DeviceSpec, link: LinkSpec, prompt: int,
              new: int, escalated: bool) -> float:
    """One query through the cascade: the small model always runs; the large one if escalated."""
    t = local_generate_s(small, end, prompt, new)
    return t + (remote_generate_s(large, edge, link, prompt, new) if escalated else 0.0)
