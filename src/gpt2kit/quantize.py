"""Int8 weights for CPU decode.

Batch-1 decode reads every weight once per token, so it is bound by memory bandwidth; int8
weights move a quarter of fp32's bytes. Each Linear of the blocks, and the output head, becomes
torch's dynamically quantized Linear: int8 weights with one scale per output channel, and
activations quantized per call, multiplied by fbgemm/oneDNN int8 kernels (VNNI/AMX where the
CPU has them). The token embedding stays fp32 for the input lookup, so the head gets its own
int8 copy and wte/lm_head are no longer tied (inference only).

The reference for this fast path is the fp32 model: tests and bench/decode.py report the
logit error and the perplexity cost.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .errors import GPT2KitError


def int8_supported() -> bool:
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


@torch.no_grad()
def quantize_int8(model):
    """Quantize `model` (a gpt2kit GPT on the CPU, fp32) in place and return it."""
    if not int8_supported():
        raise GPT2KitError("int8 needs torch's quantized CPU kernels, which this torch build lacks; use dtype='bfloat16'")
    if model.transformer.wte.weight.device.type != "cpu":
        raise GPT2KitError("int8 weights run on the CPU only; use dtype='bfloat16' on a GPU")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    head = nn.Linear(model.config.n_embd, model.lm_head.weight.shape[0], bias=False)
    head.weight = nn.Parameter(model.transformer.wte.weight.detach().float().clone())
    model.lm_head = head  # untied: the embedding lookup keeps fp32 rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao points users at torchao; the kernels are the same
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    model.quantized = "int8"
    return model.eval()
