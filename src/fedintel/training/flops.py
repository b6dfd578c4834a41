"""FLOP counts of training and inference steps, from the model's shape and the tokens processed.

Used by the network model to turn real work into simulated device time. The counts follow Kaplan et al.
(2020): a forward pass costs ``2 N`` FLOPs per token for ``N`` parameters taking part in matmuls, plus
attention scores ``2 * n_layers * ctx * d_model``. The backward pass of a PEFT model computes activation
gradients through every layer (frozen base included, ``2 N`` per token) but weight gradients only for the
trainable tensors (``2 N_trainable`` per token).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about a model."""

    num_params: int
    num_trainable: int
    num_layers: int
    hidden_size: int

    @classmethod
    def of(cls, model: object) -> ModelShape:
        """Read the shape of a (PEFT-wrapped) Hugging Face model."""
        params = list(model.parameters())  # type: ignore[attr-defined]
        cfg = getattr(model, "config", None)
        return cls(
            num_params=sum(p.numel() for p in params),
            num_trainable=sum(p.numel() for p in params if p.requires_grad),
            num_layers=int(getattr(cfg, "num_hidden_layers", 1) or 1),
            hidden_size=int(getattr(cfg, "hidden_size", 0) or 0),
        )


def forward_flops(shape: ModelShape, tokens: int, seq_len: int) -> float:
    """FLOPs of a forward pass over ``tokens`` tokens in sequences of ``seq_len``."""
    attention = 2.0 * shape.num_layers * seq_len * shape.hidden_size
    return tokens * (2.0 * shape.num_params + attention)


def train_flops(shape: ModelShape, tokens: int, seq_len: int) -> float:
    """FLOPs of forward + backward over ``tokens`` tokens for a PEFT model."""
    fwd = forward_flops(shape, tokens, seq_len)
    backward_activations = fwd  # gradients flow back through the frozen base too
    backward_weights = 2.0 * shape.num_trainable * tokens
    return fwd + backward_activations + backward_weights
