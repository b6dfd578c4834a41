"""GPU memory the paper-scale run needs, computed from the model's real parameter count (no GPU needed).

Builds the model of ``examples/paper_scale.yaml`` (LLaMA-7B by default) on PyTorch's meta device from its
architecture, counts its parameters and the LoRA parameters PEFT adds, and adds up, per precision:

- the frozen base weights: 4 bytes/param (fp32), 2 (bf16), 1 + 1/64 ... for 8-bit, and 0.5 + overhead for NF4
  with double quantization (bitsandbytes keeps embeddings and the LM head in the compute dtype);
- the adapter in fp32 with its gradient and AdamW's two moments (16 bytes per trainable parameter);
- activations of one micro-batch, by Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
  Transformer Models": s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit, or, with gradient checkpointing,
  2*s*b*h bytes per layer plus one layer's full activations;
- the logits of one micro-batch in fp32 (s*b*vocab*4 bytes, twice for the loss's softmax).

It prints a markdown table for the README. The architecture comes from the model's config.json (the cache, a
local directory, or, offline, the published LLaMA-7B configuration built in below).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

# huggyllama/llama-7b's published config.json (the LLaMA-7B of the paper), for machines without the hub.
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6)
GIB = 1024**3


def architecture(name: str) -> object:
    try:
        return AutoConfig.from_pretrained(name)
    except Exception:  # offline: the published configuration
        print(f"({name}'s config.json is not reachable here; using the published LLaMA-7B configuration)")
        return LlamaConfig(**LLAMA_7B)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="huggyllama/llama-7b")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence (paper: 128)")
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    cfg = architecture(args.model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        peft_model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=16, task_type="CAUSAL_LM"))
    n_lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    h, L, a, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size
    s, b = args.seq, args.micro_batch
    unquantized = 2 * v * h  # embeddings and LM head stay in the compute dtype under bitsandbytes
    linear = n_params - unquantized - (2 * L + 1) * h  # norms are tiny
    weights = {
        "fp32": 4 * n_params,
        "bf16": 2 * n_params,
        "8bit": linear * (1 + 4 / 4096) + 2 * (n_params - linear),  # int8 + one fp32 scale per row (approx.)
        "4bit": linear * (0.5 + 0.127 / 8) + 2 * (n_params - linear),  # NF4 + double-quantized absmax
    }
    adapter = 16 * n_lora  # fp32 weights, gradients and AdamW's two moments
    act_full = L * s * b * h * (34 + 5 * a * s / h)
    act_ckpt = L * 2 * s * b * h + s * b * h * (34 + 5 * a * s / h)
    logits = 2 * 4 * s * b * v
    print(f"{args.model}: {n_params:,} parameters; LoRA r={args.rank} on q/v: {n_lora:,} trainable; "
          f"micro-batch {b} x {s} tokens\n")
    print("| base precision | gradient checkpointing | weights (GiB) | adapter + AdamW (GiB) | activations + logits (GiB) | total (GiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for prec in ("fp32", "bf16", "8bit", "4bit"):
        for ckpt in (False, True):
            act = (act_ckpt if ckpt else act_full) * (2 if prec == "fp32" else 1) + logits
            total = weights[prec] + adapter + act
            print(f"| {prec} | {'yes' if ckpt else 'no'} | {weights[prec] / GIB:.1f} | {adapter / GIB:.2f} | "
                  f"{act / GIB:.2f} | {total / GIB:.1f} |")
    print("\nAdd about 1 GiB for the CUDA context and allocator slack.")


if __name__ == "__main__":
    main()
