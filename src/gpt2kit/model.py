"""GPT-2 in PyTorch, in the shape of nanoGPT's model.py.

Module names equal the GPT-2 checkpoint keys (transformer.wte, transformer.h.N.attn.c_attn,
transformer.h.N.mlp.c_fc, transformer.ln_f, ...), so loading a checkpoint is a key copy
(see weights.py). Linear layers store (out, in); HF's Conv1D stores (in, out).

Inference uses a preallocated KV cache: each forward writes its keys and values into the
cache at cache.pos and attends over the filled prefix. No tensor is concatenated per token.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .errors import GPT2KitError


class KVCache:
    """Static key/value storage for every layer: k, v are (n_layer, B, nh, max_len, hs).

    `key_mask` (B, max_len) is False at left-padding slots of a batched prompt; it is None
    when no row is padded, which keeps SDPA on its fast unmasked path.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, *, device=None, dtype=torch.float32):
        if max_len > config.block_size:
            raise GPT2KitError(f"KV cache length {max_len} exceeds the model context {config.block_size}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_mask: torch.Tensor | None = None
        self.pos = 0  # number of filled positions

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        self.pos = 0
        self.key_mask = None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, mask=None, is_causal=True, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            p = cache.pos
            cache.k[layer, :, :, p : p + T] = k
            cache.v[layer, :, :, p : p + T] = v
            k = cache.k[layer, :, :, : p + T]  # (B, nh, S, hs)
            v = cache.v[layer, :, :, : p + T]  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
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

    def forward(self, x, mask=None, is_causal=True, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache, layer)  # pre-LN residual
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

    def forward(self, idx, targets=None, *, cache: KVCache | None = None, positions=None, last_only: bool = False):
        """idx (B, T) token ids -> (logits, loss).

        logits are (B, T, vocab_size), or (B, 1, vocab_size) with last_only. With a cache,
        idx continues the cached sequence at cache.pos and the cache advances by T.
        positions (B, T) overrides the position ids (used for left-padded batches).
        """
        B, T = idx.shape
        p = cache.pos if cache is not None else 0
        S = p + T  # keys visible to the last query
        if cache is not None and S > cache.max_len:
            raise GPT2KitError(f"sequence of {S} tokens overflows the KV cache ({cache.max_len})")
        if positions is None:
            if S > self.config.block_size:
                raise GPT2KitError(f"sequence of {S} tokens exceeds the model context {self.config.block_size}")
            positions = torch.arange(p, S, dtype=torch.long, device=idx.device)  # (T,)
        mask, is_causal = self._attn_mask(cache, p, T, idx.device)

        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, mask, is_causal, cache, i)
        if cache is not None:
            cache.pos = S
        x = self.transformer.ln_f(x)  # (B, T, C)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, padded V)
        if logits.shape[-1] != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # drop padding rows: never sampled
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @staticmethod
    def _attn_mask(cache: KVCache | None, p: int, T: int, device):
        """(mask, is_causal) for T queries at positions p..p+T-1 over keys 0..p+T-1."""
        key_mask = cache.key_mask if cache is not None else None
        if key_mask is None:
            if p == 0:
                return None, True  # plain causal: SDPA's fast path
            if T == 1:
                return None, False  # one query sees every cached key
        S = p + T
        q_pos = torch.arange(p, S, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
        mask = k_pos <= q_pos  # (T, S) causal, offset by p
        if key_mask is not None:
            # Pad keys are hidden; each query still sees itself so that no softmax row is empty.
            mask = (mask & key_mask[:, None, None, :S]) | (k_pos == q_pos)  # (B, 1, T, S)
        return mask, False

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, max_len or self.config.block_size, device=p.device, dtype=p.dtype)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (e.g. finetune GPT-2 at block 256) by cropping the position table."""
        if not 0 < block_size <= self.config.block_size:
            raise GPT2KitError(f"block_size must be in 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())
