"""GPT-2 in PyTorch, in the shape of nanoGPT's model.py.

Module names equal the GPT-2 checkpoint keys (transformer.wte, transformer.h.N.attn.c_attn,
transformer.h.N.mlp.c_fc, transformer.ln_f, ...), so loading a checkpoint is a key copy
(see weights.py). Linear layers store (out, in); HF's Conv1D stores (in, out).

Inference passes `kv`, one step's view of the paged KV cache (inference/kv.py): the new tokens of
every row are packed into one (1, N) sequence with their own positions, the linear layers run on
all of them at once, and attention goes through kv.attend, which stores each token's key/value in
its row's blocks and attends each row over its own history. Without kv, forward is the plain
causal model used for training and as the reference the cached path is tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .errors import GPT2KitError


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, kv=None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        if kv is not None:  # packed rows (B == 1): the paged cache stores k, v and attends per row
            shape = (T, self.n_head, C // self.n_head)
            y = kv.attend(layer, q.view(shape), k.view(shape), v.view(shape))  # (T, nh, hs)
            return self.c_proj(y.reshape(B, T, C))
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C); GPT-2's tanh GELU
        return self.dropout(self.c_proj(x))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv=None, layer=0):
        x = x + self.attn(self.ln_1(x), kv, layer)  # pre-LN residual
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): two per block add to the stream.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, *, kv=None, positions=None, logits_at=None):
        """idx (B, T) token ids -> (logits, loss); logits (B, T, vocab_size).

        Inference: kv (inference.kv.StepKV) with idx (1, N), the new tokens of every row packed,
        and positions (N,), each token's position in its own row; logits_at (R,) picks the packed
        tokens whose logits are wanted (each row's last, usually), giving logits (R, vocab_size).
        """
        B, T = idx.shape
        if positions is None:
            if T > self.config.block_size:
                raise GPT2KitError(f"sequence of {T} tokens exceeds the model context {self.config.block_size}")
            positions = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv, i)
        if logits_at is not None:
            x = x[0, logits_at]  # (R, C): only these tokens reach the head
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, padded V) or (R, padded V)
        if logits.shape[-1] != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # drop padding rows: never sampled
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (e.g. finetune GPT-2 at block 256) by cropping the position table."""
        if not 0 < block_size <= self.config.block_size:
            raise GPT2KitError(f"block_size must be in 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())
