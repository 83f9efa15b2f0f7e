"""Small random models shared by test_interop.py and test_evaluate.py."""
from __future__ import annotations

import torch

PROMPT = [464, 3290, 318, 257, 1332, 286, 262, 1893]  # "The quick brown fox ..."-like GPT-2 ids


def random_gpt(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50257, bias=True, pad_vocab_multiple=1, seed=0):
    """A gpt2kit GPT with random weights; biases and LayerNorms perturbed so every tensor matters."""
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    torch.manual_seed(seed)
    m = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size,
                      bias=bias, pad_vocab_multiple=pad_vocab_multiple)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() == 2 and ".h." in name:
                # unit-gain layers (GPT-2's init makes blocks tiny next to the embeddings), so the
                # greedy continuation depends on the context instead of repeating the last token
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
    return m


def logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def hf_from_arrays(cfg: dict, sd: dict):
    """A transformers GPT2LMHeadModel holding exactly `sd` (HF key names, Conv1D layout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), (missing, unexpected)
    hf.tie_weights()
    return hf
