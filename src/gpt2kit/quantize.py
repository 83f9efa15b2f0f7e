"""Int8 and int4 weights for CPU decode.

Batch-1 decode reads every weight once per token, so it is bound by memory bandwidth; int8
weights move a quarter of fp32's bytes, int4 an eighth (plus a scale and offset per group).
Each Linear of the blocks, and the output head, is replaced:
- int8: Int8Linear, int8 weights with one scale per output row, fp32 activations (weight-only:
  a few thousand rows at a time dequantized and multiplied by torch's fp32 matmul; the C decode
  step reads the same tensors).
- int4: Int4Linear, group-wise asymmetric 4-bit weights (like ggml's q4_1: per group of 32 input
  weights a scale and a minimum), multiplied by torch's own int4 CPU kernel. Its vectorized path
  takes bf16 activations and scales (fp32 ones take a scalar loop ~35x slower), so each layer's
  input is rounded to bf16 and its output is fp32 again. It also keeps the codes in the C decode
  step's plain layout (nibbles, scale_min), which that step multiplies with fp32 activations.
The token embedding stays fp32 for the input lookup, so the head gets its own quantized copy
and wte/lm_head are no longer tied (inference only).

The reference for these fast paths is the fp32 model (and, for int4, the dequantized weights):
tests and bench/decode.py report the logit error and the perplexity cost.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from .errors import GPT2KitError


INT4_GROUP = 32  # input weights per scale/minimum, as ggml's q4_0/q4_1 blocks
# Weights are quantized this many rows at a time, so the fp32 temporaries stay a few MiB instead of
# several copies of the 154 MiB head. A multiple of 64: torch's int4 packing is row-separable at 64.
CHUNK_ROWS = 4096
# Int8Linear.forward dequantizes this many weight rows at a time into fp32 (6 MiB at K = 768) and multiplies them
# there, while they are still in cache. torch's own weight-only int8 kernel (_weight_int8pack_mm) was 4-20x slower
# than this at every batch size measured (1 ms per row for a 3072x768 weight: a 1024-token prompt took minutes).
DEQUANT_ROWS = 2048


class Int8Linear(nn.Module):
    """y = x W^T + b with W[n] = weight[n] * scale[n]: int8 weights, one fp32 scale per output row (symmetric),
    fp32 activations. forward dequantizes DEQUANT_ROWS rows at a time; the C decode step (inference/native.py) reads the same tensors."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.out_features, self.in_features = w.shape
        self.register_buffer("weight", torch.empty(w.shape, dtype=torch.int8))  # (N, K)
        self.register_buffer("scale", torch.empty(w.shape[0]))  # (N,)
        for i in range(0, w.shape[0], CHUNK_ROWS):
            c = w[i : i + CHUNK_ROWS].float()  # (rows, K)
            scale = c.abs().amax(1).clamp(min=1e-12) / 127  # (rows,)
            self.weight[i : i + CHUNK_ROWS] = torch.round(c / scale[:, None]).clamp(-127, 127)
            self.scale[i : i + CHUNK_ROWS] = scale
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features).float()  # (M, K)
        y = x2.new_empty(x2.shape[0], self.out_features)  # (M, N)
        for i in range(0, self.out_features, DEQUANT_ROWS):
            y[:, i : i + DEQUANT_ROWS] = x2 @ self.weight[i : i + DEQUANT_ROWS].float().t()  # (M, rows)
        y = y.mul_(self.scale).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale[:, None]  # (N, K): the weights this layer multiplies by


@torch.no_grad()
def quantize_int8(model):
    """Quantize `model` (a gpt2kit GPT on the CPU, fp32) to int8 weights in place and return it."""
    if model.transformer.wte.weight.device.type != "cpu":
        raise GPT2KitError("int8 weights run on the CPU only; use dtype='bfloat16' on a GPU")
    _untie_head(model)
    _replace_linears(model, Int8Linear)
    model.quantized = "int8"
    return model.eval()


def _replace_linears(model, make) -> None:
    for parent in [b.attn for b in model.transformer.h] + [b.mlp for b in model.transformer.h] + [model]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child))


def _untie_head(model) -> None:
    """Give the output head its own weight: the embedding lookup keeps fp32 rows, the head is quantized."""
    head = nn.Linear(model.config.n_embd, model.lm_head.weight.shape[0], bias=False, device="meta")
    head.weight = model.transformer.wte.weight  # shared until quantized: the quantized layer makes its own buffers
    model.lm_head = head


def int4_supported() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def int4_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) -> q (N, K) int32 in 0..15, scale and min (N, K / group, 1): w ~ q * scale + min per group."""
    N, K = w.shape
    g = w.reshape(N, K // group, group)  # (N, G, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)  # (N, G, 1)
    scale = (hi - lo).clamp(min=1e-8) / 15
    q = ((g - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(N, K)
    return q, scale, lo


NIBBLE_BLOCK = 128  # inputs per 64 bytes of the C step's int4 layout


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Codes q (N, K) uint8 in 0..15 -> (N, K / 2) bytes, the C decode step's int4 layout.

    Each block of 128 inputs is 64 bytes, byte j holding input j in its low nibble and input j + 64
    in its high one, so one 64-byte load splits with a mask and a shift into two runs of 64 codes in
    input order (one vpdpbusd each). Inputs past the last whole block (K mod 128: gpt2-xl's 1600)
    go by groups of 32: 16 bytes, byte j holding input j and input j + 16."""
    N, K = q.shape
    main = q[:, : K - K % NIBBLE_BLOCK].reshape(N, -1, 2, NIBBLE_BLOCK // 2)  # (N, blocks, 2, 64)
    tail = q[:, K - K % NIBBLE_BLOCK :].reshape(N, -1, 2, INT4_GROUP // 2)  # (N, groups, 2, 16)
    return torch.cat([(x[:, :, 0] | (x[:, :, 1] << 4)).reshape(N, -1) for x in (main, tail)], 1)


def unpack_nibbles(b: torch.Tensor, K: int) -> torch.Tensor:
    """pack_nibbles undone: (N, K / 2) bytes -> codes (N, K) uint8."""
    N, split = b.shape[0], (K - K % NIBBLE_BLOCK) // 2
    main = b[:, :split].reshape(N, -1, 1, NIBBLE_BLOCK // 2)
    tail = b[:, split:].reshape(N, -1, 1, INT4_GROUP // 2)
    return torch.cat([torch.cat([x & 15, x >> 4], 2).reshape(N, -1) for x in (main, tail)], 1)


class Int4Linear(nn.Module):
    """y = x W^T + b with W in group-wise 4 bits: W[n, k] = q[n, k] * scale[n, g] + min[n, g], g = k // group.

    q is packed by torch for its int4 CPU kernel, which takes (q - 8) * scale + zero with zero = min + 8 * scale."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        N, K = linear.weight.shape
        if K % group:
            raise GPT2KitError(f"int4 needs in_features divisible by {group}, got {K}")
        self.group, self.in_features, self.out_features = group, K, N
        Np, G = N + -N % 16, K // group  # the kernel takes whole tiles of 16 rows; the padding is sliced off
        self.register_buffer("packed", torch.empty(Np, K // 2, dtype=torch.uint8))  # (Np, K / 2), torch's int4 layout
        self.register_buffer("scale_zero", torch.empty(G, Np, 2, dtype=torch.bfloat16))  # (G, Np, 2)
        # the same weights as the C decode step reads them (inference/native.py): codes packed by pack_nibbles, and a bf16
        # (scale, min) pair per group
        self.register_buffer("nibbles", torch.empty(N, K // 2, dtype=torch.uint8))  # (N, K / 2)
        self.register_buffer("scale_min", torch.empty(N, G, 2, dtype=torch.bfloat16))  # (N, G, 2)
        for i in range(0, N, CHUNK_ROWS):
            self._quantize_rows(linear.weight.detach()[i : i + CHUNK_ROWS].float(), i)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())

    def _quantize_rows(self, w: torch.Tensor, i: int) -> None:
        """Quantize w (rows, K), the weight's rows from i on, into every buffer."""
        rows, K, g = *w.shape, self.group
        pad = -rows % 16 if i + rows == self.out_features else 0
        q, scale, lo = int4_groups(torch.cat([w, w.new_zeros(pad, K)]), g)  # (rows + pad, K), (rows + pad, G, 1) twice
        self.packed[i : i + rows + pad] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.scale_zero[:, i : i + rows + pad] = torch.cat([scale, lo + 8 * scale], 2).transpose(0, 1)
        self.nibbles[i : i + rows] = pack_nibbles(q[:rows].to(torch.uint8))
        self.scale_min[i : i + rows] = torch.cat([scale[:rows], lo[:rows]], 2)

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, K)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scale_zero)  # (M, N padded), bf16
        y = y[:, : self.out_features].float().reshape(*x.shape[:-1], self.out_features)  # (..., N)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """(N, K) fp32: the weights of the C decode step's format (nibbles, bf16 scale and min)."""
        N, K, g = self.out_features, self.in_features, self.group
        q = unpack_nibbles(self.nibbles, K).view(N, K // g, g).float()  # (N, G, g)
        sm = self.scale_min.float()
        return (q * sm[:, :, :1] + sm[:, :, 1:]).reshape(N, K)



@torch.no_grad()
def quantize_int4(model, group: int = INT4_GROUP):
    """Quantize `model` (a gpt2kit GPT on the CPU, fp32) to group-wise int4 weights in place and return it."""
    if not int4_supported():
        raise GPT2KitError(f"int4 needs torch's int4 CPU kernel (torch >= 2.6), which torch {torch.__version__} lacks; use dtype='int8'")
    if model.transformer.wte.weight.device.type != "cpu":
        raise GPT2KitError("int4 weights run on the CPU only; use dtype='bfloat16' on a GPU")
    _untie_head(model)
    _replace_linears(model, lambda linear: Int4Linear(linear, group))
    model.quantized = "int4"
    return model.eval()
