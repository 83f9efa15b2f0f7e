"""Helpers the exporters share: biases for bias-free models, the unwrapped module."""
from __future__ import annotations

import torch

BIASED = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def add_zero_biases(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Fill the biases a bias=False model lacks with zeros (exact: x + 0 == x).

    GPT-2's file formats (HF, llm.c, GGUF) always carry biases, so a nanoGPT-style
    bias=False model is exported as a GPT-2 whose biases are zero. The shape of each bias
    is the output size of the matching weight.
    """
    out = dict(sd)
    prefixes = [f"transformer.h.{i}.{m}" for i in range(config.n_layer) for m in BIASED] + ["transformer.ln_f"]
    for p in prefixes:
        w, b = out[p + ".weight"], p + ".bias"
        if b not in out:
            n = w.shape[0] if p.endswith(("ln_1", "ln_2", "ln_f")) or w.dim() == 1 else None
            if n is None:  # Linear: gpt2kit stores (out, in), HF's Conv1D stores (in, out)
                n = w.shape[1] if _conv1d_layout(sd) else w.shape[0]
            out[b] = torch.zeros(n, dtype=w.dtype)
    return out


def _conv1d_layout(sd) -> bool:
    # c_fc maps C -> 4C: (4C, C) in Linear layout, (C, 4C) in HF's Conv1D layout
    w = sd["transformer.h.0.mlp.c_fc.weight"]
    return w.shape[1] > w.shape[0]


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """gpt2kit keys (no tied lm_head), wte cut to vocab_size, biases filled in; CPU float tensors."""
    model = getattr(model, "_orig_mod", model)
    V = model.config.vocab_size
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][:V]
    return add_zero_biases(sd, model.config)
