"""fp32 and bf16 weights prepacked for oneDNN, for CPU inference.

Batch-1 decode is a matrix-vector product per Linear, bound by how fast the weights stream from
memory. torch's default fp32 path calls MKL, whose kernels on some CPUs (AMD EPYC here) read far
below the memory bandwidth; oneDNN picks its kernel by the CPU's instruction set and reads a weight
reordered once, at load, into the blocked layout that kernel wants. The same weight serves any
batch (prefill included). This is what torch.compile's CPU backend does with frozen weights
(mkldnn._linear_pointwise over mkldnn._reorder_linear_weight), done here without a compiler.

The reference for this fast path is the unpacked model: tests check equal logits (fp32, 1e-5)
and bench/decode.py measures the speed.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def prepack_supported() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """nn.Linear for inference with its weight reordered for oneDNN (an opaque tensor: no state dict, no training)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features, self.dtype = w.shape[1], w.shape[0], w.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)  # packed for batch 1: the decode case
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x):
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)  # (..., N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, oneDNN-packed"


@torch.no_grad()
def prepack(model, head: bool = True):
    """Replace the model's Linear layers (on the CPU, fp32 or bf16) by PackedLinear, in place; returns the model.

    head=False keeps the output head tied to the token embedding (one copy of its weight in memory)."""
    if not prepack_supported() or model.transformer.wte.weight.device.type != "cpu":
        return model
    if head:
        untied = nn.Linear(model.config.n_embd, model.lm_head.weight.shape[0], bias=False)
        untied.weight = model.lm_head.weight  # the embedding keeps its rows; the head gets the packed copy
        model.lm_head = PackedLinear(untied)
    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, PackedLinear(child))
    model.prepacked = True
    return model.eval()
