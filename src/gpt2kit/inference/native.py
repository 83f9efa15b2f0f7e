"""The decode step in C (csrc/decode.c), over the torch model's own weights and the engine's KV pool.

At batch 1 a decode step is ~200 small torch ops, and their dispatch costs as much as reading the
weights. The engine hands steps where every row decodes one token (and few rows do) to
NativeStep, which runs the whole model in one C call on its own threads; any other step (prompt
chunks, prompt log-probs, many rows) runs the torch model. Both write the same pool, so a row
moves between them freely.

The extension is built by `pip install` with the system's C compiler; where it could not be
built, or GPT2KIT_NATIVE=0, or the model holds weights it does not read (oneDNN-packed ones, a
GPU), the engine uses the torch model for every step. tests/test_native.py checks its logits
against the torch path.

int8 and int4 weights run on int8 activations where the CPU has VNNI (as ggml's q8_0/q4_0 do:
each group of 32 inputs rounded to int8 codes and a scale), which halves the work per weight
byte; GPT2KIT_INT8_ACTIVATIONS=0 keeps fp32 activations, whose logits equal the dequantized
weights' (1e-5). Steps that return log-probs run the torch model either way.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

try:
    from . import _decode
except ImportError:  # not built (no compiler at install time): the torch path serves every step
    _decode = None

MAX_ROWS = 16  # more rows than this are a matrix product: oneDNN/MKL through torch do it better
_F32, _BF16, _Q8, _Q4 = 0, 1, 2, 3


def available() -> bool:
    """Whether the C step is built and not turned off (GPT2KIT_NATIVE=0)."""
    return _decode is not None and os.environ.get("GPT2KIT_NATIVE", "1") != "0"


def _int8_activations_default() -> bool:
    return os.environ.get("GPT2KIT_INT8_ACTIVATIONS", "1") != "0"


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class NativeStep:
    """Decode steps for `model` over `pool` (inference.kv.BlockPool); build with native_step().

    int8_activations: int8/int4 linears take int8-rounded activations where the CPU has VNNI
    (self.int8_activations says whether they do); False keeps fp32 activations.
    """

    def __init__(self, model, pool, int8_activations: bool | None = None):
        cfg = model.config
        self._keep: list[torch.Tensor] = []  # fp32 copies of small bf16 tensors, alive as long as the C model
        wte = model.transformer.wte.weight
        emb_bf16 = wte.dtype == torch.bfloat16
        layers = [(self._norm(b.ln_1), self._linear(b.attn.c_attn), self._linear(b.attn.c_proj), self._norm(b.ln_2),
                   self._linear(b.mlp.c_fc), self._linear(b.mlp.c_proj)) for b in model.transformer.h]
        dims = (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.padded_vocab_size, pool.block_len, cfg.block_size,
                cfg.layer_norm_epsilon, pool.num_blocks)
        self.model, self.pool, self.vocab = model, pool, cfg.vocab_size
        self._c = _decode.model(dims, (int(emb_bf16), _ptr(wte), _ptr(model.transformer.wpe.weight)), layers,
                                self._norm(model.transformer.ln_f), self._linear(model.lm_head),
                                (int(pool.k.dtype == torch.bfloat16), _ptr(pool.k), _ptr(pool.v)),
                                _int8_activations_default() if int8_activations is None else int8_activations)
        self.int8_activations = _decode.int8_activations(self._c)
        self._logits = torch.empty(0)

    def _f32(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or t.dtype == torch.float32:
            return t
        t = t.detach().float()
        self._keep.append(t)
        return t

    def _norm(self, ln: nn.LayerNorm) -> tuple[int, int]:
        return _ptr(self._f32(ln.weight)), _ptr(self._f32(ln.bias))

    def _linear(self, m: nn.Module) -> tuple:
        from ..quantize import Int4Linear, Int8Linear

        if isinstance(m, Int8Linear):
            return _Q8, m.out_features, m.in_features, _ptr(m.weight), _ptr(m.scale), 0, _ptr(m.bias)
        if isinstance(m, Int4Linear):
            return _Q4, m.out_features, m.in_features, _ptr(m.nibbles), 0, _ptr(m.scale_min), _ptr(m.bias)
        w = m.weight
        fmt = _BF16 if w.dtype == torch.bfloat16 else _F32
        return fmt, w.shape[0], w.shape[1], _ptr(w), 0, 0, _ptr(self._f32(m.bias))

    def __call__(self, tokens: list[int], positions: list[int], tables: list[list[int]], threads: int) -> torch.Tensor:
        """One decode step: row r's token at its position, with its block table; returns logits (R, vocab)."""
        R, bl = len(tokens), self.pool.block_len
        nb = max(positions) // bl + 1
        ints = torch.tensor(tokens + positions + [b for t, p in zip(tables, positions) for b in (t[: p // bl + 1] + [0] * nb)[:nb]])
        V = self.model.config.padded_vocab_size
        if self._logits.numel() < R * V:  # reused: a fresh 200 KB tensor per step costs page faults
            self._logits = torch.empty(R * V)
        logits = self._logits[: R * V].view(R, V)
        p = ints.data_ptr()
        _decode.step(self._c, threads, R, p, p + 8 * R, p + 16 * R, nb, logits.data_ptr())
        return logits[:, : self.vocab]


def native_step(model, pool, int8_activations: bool | None = None) -> NativeStep | None:
    """A NativeStep when the C step is available and reads every weight of `model` where it is; else None."""
    if not available() or not _readable(model) or pool.k.device.type != "cpu" or pool.k.dtype not in (torch.float32, torch.bfloat16):
        return None
    return NativeStep(model, pool, int8_activations)


def _readable(model) -> bool:
    from ..quantize import Int4Linear, Int8Linear

    wte = model.transformer.wte.weight
    if wte.device.type != "cpu" or wte.dtype not in (torch.float32, torch.bfloat16) or not wte.is_contiguous():
        return False
    if getattr(model.config, "n_embd", 0) % model.config.n_head:
        return False
    for m in [model.lm_head] + [l for b in model.transformer.h for l in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]:
        if isinstance(m, (Int8Linear, Int4Linear)):
            continue
        if type(m) is not nn.Linear or m.weight.dtype != wte.dtype or not m.weight.is_contiguous():
            return False  # oneDNN-packed, LoRA-wrapped, column-major: the torch path reads those
    return all(p.dtype == wte.dtype and p.is_contiguous() for b in model.transformer.h for p in (b.ln_1.weight, b.ln_2.weight))
