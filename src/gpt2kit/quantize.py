"""Int8 weight-only quantization for CPU decode.

Batch-1 decode reads every weight once per token, so it is bound by memory bandwidth:
int8 weights move a quarter of fp32's bytes. Each Linear (and the output head) keeps an int8
matrix with one fp32 scale per output channel (symmetric, absmax / 127); activations stay fp32.
The matmul is torch's `_weight_int8pack_mm` kernel (the one gpt-fast uses), with a plain
dequantize-then-matmul fallback, which is also the reference the tests compare it with.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> (int8 (N, K), scales (N,)) with w ~= q * scales[:, None]."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
    return q, scales


def _has_int8pack_mm() -> bool:
    try:
        torch._weight_int8pack_mm(torch.zeros(1, 32), torch.zeros(8, 32, dtype=torch.int8), torch.ones(8))
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int8Linear(nn.Module):
    """y = x @ (q * scales)^T + bias, with q int8 (N, K)."""

    fast = None  # whether torch's int8 kernel runs here; probed once

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, s = quantize_per_channel(weight)
        self.register_buffer("weight", q)
        self.register_buffer("scales", s)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        if Int8Linear.fast is None:
            Int8Linear.fast = _has_int8pack_mm()

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scales[:, None]  # (N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (Int8Linear.fast and x.device.type == "cpu" and x.dtype == torch.float32):
            return F.linear(x, self.dequantized().to(x.dtype), self.bias)
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight, self.scales)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


@torch.no_grad()
def quantize_int8(model):
    """Swap every Linear of the blocks and the output head for Int8Linear, in place.

    The token embedding stays fp32 for the input lookup (one row per token); the head gets
    its own int8 copy, so wte and lm_head are no longer tied (inference only).
    """
    for block in model.transformer.h:
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            lin = getattr(parent, name)
            setattr(parent, name, Int8Linear(lin.weight, lin.bias))
    model.lm_head = Int8Linear(model.transformer.wte.weight, None)
    model.quantized = "int8"
    return model.eval()
