"""Linear layers with oneDNN-prepacked weights, for decoding on a CPU.

``torch.nn.Linear`` on a CPU multiplies by the weight in its stored (out, in) layout, which the GEMM re-blocks on
every call. oneDNN can reorder a weight once into the blocked layout its kernels read (what PyTorch's
Inductor does for a frozen model on a CPU, and what Intel's extension for PyTorch does in ``optimize``);
:class:`PackedLinear` keeps that reordered weight and calls oneDNN's linear directly. On this project's 2-core
CPU, SmolLM2-135M's decode step in float32 then takes about 0.55x as long at 16 rows and 0.75x at one row
(``benchmarks/serve.py --profile``): batched decoding is compute-bound, and the blocked layout is what lets the
kernel reach the cores' vector units.

Only for inference (the packed weight has no gradient), on a CPU, in float32 or bfloat16; weights are packed
after any adapter is merged. The output equals ``nn.Linear``'s up to floating-point summation order.
"""

from __future__ import annotations

import torch


def packing_available(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """None when linears on ``device`` in ``dtype`` can be packed, else why not (for a clear refusal)."""
    if torch.device(device).type != "cpu":
        return f"weight packing is a CPU (oneDNN) optimisation; the device is {device}"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"weight packing serves float32 and bfloat16, not {dtype}"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this PyTorch build has no oneDNN (mkldnn) linear"
    return None


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference with its weight reordered once for oneDNN."""

    def __init__(self, linear: torch.nn.Linear, batch_hint: int = 16) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.dtype = weight.dtype
        # an opaque oneDNN tensor: a plain attribute, not a parameter or buffer (it has no state_dict form)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in the weights' dtype, as autocast would hand it to nn.Linear
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features).to(self.dtype), self.packed,
                                               self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}"


def pack_linears(module: torch.nn.Module, batch_hint: int = 16) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by a :class:`PackedLinear`; returns how many.

    A linear reached twice (tied or shared) becomes one packed module. Raises ``ValueError`` when the
    weights cannot be packed (see :func:`packing_available`)."""
    done: dict[int, PackedLinear] = {}

    def walk(parent: torch.nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                why = packing_available(child.weight.device, child.weight.dtype)
                if why:
                    raise ValueError(why)
                if id(child) not in done:
                    done[id(child)] = PackedLinear(child, batch_hint)
                setattr(parent, name, done[id(child)])
            elif not isinstance(child, PackedLinear):
                walk(child)

    walk(module)
    return len(done)
