"""A KV-cache pool with one slot per generating row, and one forward step over all of them.

Rows join and leave the batch at any time, so each sits at its own position. model.forward
advances one shared cache.pos, so the batched decode step lives here instead: it runs the
model's own modules, writes each row's key/value at that row's position and masks each row's
attention to its own filled prefix. Prefill goes through model.forward on a view of one slot.

Active rows always occupy slots 0..B-1 (a freed slot is filled by moving the last row into
it), so the step attends over a plain slice of the pool: no per-step gather of the cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling import BLOCK
from ..model import GPT, KVCache


class SlotCache(KVCache):
    """A KVCache whose storage is one slot of the pool (a view): model.forward fills it in place."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v  # (n_layer, 1, nh, L, hs) views
        self.key_mask = None
        self.pos = 0


LOGIT_PAD = BLOCK  # logits rows are padded to a multiple of the sampler's block with -inf


class SlotPool:
    """Per-slot state, grown by doubling up to max_slots: k, v (n_layer, slots, nh, block_size, hs),
    and logits (slots, Vp), each row's scores for its next token; columns >= vocab_size hold -inf."""

    def __init__(self, model: GPT, max_slots: int):
        self.model = model
        self.max_slots = max_slots
        w = model.transformer.wte.weight
        self.device, self.dtype = w.device, w.dtype
        self.k = self.v = self.logits = None
        self.capacity = 0

    def _shape(self, slots: int):
        c = self.model.config
        return (c.n_layer, slots, c.n_head, c.block_size, c.head_size)

    def ensure(self, slots: int) -> None:
        """Make room for `slots` rows, keeping the rows already stored."""
        if slots <= self.capacity:
            return
        cap = min(self.max_slots, max(slots, 2 * self.capacity))
        # zeros, not empty: masked keys still enter q @ k^T, and garbage NaN would leak through
        k = torch.zeros(self._shape(cap), device=self.device, dtype=self.dtype)
        v = torch.zeros_like(k)
        V = self.model.config.vocab_size
        logits = torch.full((cap, -(-V // LOGIT_PAD) * LOGIT_PAD), float("-inf"), device=self.device, dtype=torch.float32)
        if self.capacity:
            k[:, : self.capacity] = self.k
            v[:, : self.capacity] = self.v
            logits[: self.capacity] = self.logits
        self.k, self.v, self.logits, self.capacity = k, v, logits, cap

    def release(self) -> None:
        """Free the storage (the engine calls this when idle, so a burst does not pin memory)."""
        self.k = self.v = self.logits = None
        self.capacity = 0

    def slot_cache(self, slot: int) -> SlotCache:
        return SlotCache(self.k[:, slot : slot + 1], self.v[:, slot : slot + 1])

    def copy(self, src: int, dst: int, length: int) -> None:
        """Copy slot src (its first `length` cached positions and its logits) into slot dst."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
        self.logits[dst] = self.logits[src]

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], all_logits: bool = False) -> torch.Tensor:
        """Run a prompt into `slot` (cache and next-token logits); returns logits (T, V) or, by default, (1, V)."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        logits, _ = self.model(idx, cache=self.slot_cache(slot), last_only=not all_logits)
        self.logits[slot, : logits.shape[-1]] = logits[0, -1]
        return logits[0]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token for each of rows 0..B-1: tokens (B,) at positions pos (B,) -> logits (B, V), also kept in self.logits."""
        m, cfg = self.model, self.model.config
        B = tokens.shape[0]
        C, nh, hs, V = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.vocab_size
        S = int(pos.max()) + 1  # keys any row can see
        rows = torch.arange(B, device=self.device)
        visible = torch.arange(S, device=self.device)[None, :] <= pos[:, None]  # (B, S)
        mask = visible[:, None, None, :]  # (B, 1, 1, S)
        x = m.transformer.wte(tokens) + m.transformer.wpe(pos)  # (B, C)
        x = x[:, None, :]  # (B, 1, C)
        for i, block in enumerate(m.transformer.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)  # (B, 1, C) each
            q = q.view(B, 1, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
            self.k[i, rows, :, pos] = k.view(B, nh, hs)
            self.v[i, rows, :, pos] = v.view(B, nh, hs)
            keys = self.k[i, :B, :, :S]  # (B, nh, S, hs), a view
            vals = self.v[i, :B, :, :S]  # (B, nh, S, hs)
            y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)  # (B, nh, 1, hs)
            y = y.transpose(1, 2).reshape(B, 1, C)  # (B, 1, C)
            x = x + attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
        logits = m.lm_head(m.transformer.ln_f(x))[:, 0, :V]  # (B, V)
        self.logits[:B, :V] = logits
        return self.logits[:B]
