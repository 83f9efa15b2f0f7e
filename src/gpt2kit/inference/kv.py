"""The paged KV cache: keys and values of every layer in fixed-size blocks from one pool.

vLLM's design (Kwon et al., "Efficient Memory Management for Large Language Model Serving with
PagedAttention", 2023), written for CPU torch:
- The pool holds k, v of shape (n_layer, num_blocks, block_len, n_head, head_size). A row (one
  sequence) owns a block table, the ids of its blocks in order; position p of the row lives in
  block table[p // block_len] at offset p % block_len. Blocks are taken as a row grows and
  given back when it ends, so memory follows the tokens in flight.
- Block 0 is never handed out: it stays zero and pads the tables of shorter rows in a batch.
- Prefix reuse: a block that is full is registered under its content, the key
  (key of the previous block, its tokens). Keys are exact (tokens are compared, not hashed), so a
  hit is always the same tokens at the same positions, hence the same keys and values. A row whose
  prompt starts with registered blocks takes them (reference counts) instead of computing them.
  A released block that is registered stays cached, reusable, until a row needs a block and no
  released block is free (least recently released first; untouched memory is used last).
  Only full blocks are shared and a row never writes into a full block, so no copy-on-write is needed.
- A block can carry the prompt log-probabilities computed with it (each position's log-probability
  of its own token, and the top MAX_LOGPROBS alternatives), so a scoring request reuses them too.

The storage is torch.empty (pages are touched, so resident, only when used); a block is zeroed when
taken, because a masked key still enters q @ k^T and garbage NaN would leak through the softmax.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..errors import GPT2KitError

BLOCK_LEN = 16  # positions per block
ROOT = -1  # the "previous block" key of a row's first block


@dataclass
class PromptRecord:
    """Prompt log-probabilities at a block's positions: logprob (block_len,) of each position's own token
    (NaN at a window's position 0, which nothing predicts), the top alternatives (block_len, k) ids and values,
    and next_lp (V,), the distribution its last position gives the token after the block."""

    logprob: torch.Tensor
    top_ids: torch.Tensor
    top_lp: torch.Tensor
    next_lp: torch.Tensor


class BlockPool:
    def __init__(self, config, num_blocks: int, *, device=None, dtype=torch.float32, block_len: int = BLOCK_LEN):
        if num_blocks < 2:
            raise GPT2KitError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        # block-major, then position, then head: gathering a row's blocks copies whole contiguous blocks, and
        # (blocks, positions) flatten into one sequence axis that attention reads as a strided view
        shape = (config.n_layer, num_blocks, block_len, config.n_head, config.head_size)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.k[:, 0] = 0  # the padding block
        self.v[:, 0] = 0
        self.block_len = block_len
        self.num_blocks = num_blocks
        self._free: list[int] = []  # released blocks (resident memory), a stack
        self._fresh = 1  # blocks >= this id were never used: their memory is not resident yet
        self._refs = [0] * num_blocks
        self._key: list[tuple | None] = [None] * num_blocks  # block -> its content key, when registered
        self._uid = [0] * num_blocks  # block -> id of its registered content (keys of later blocks refer to it)
        self._next_uid = 0
        self._cached: dict[tuple, int] = {}  # content key -> block
        self._evictable: OrderedDict[int, None] = OrderedDict()  # registered blocks nobody holds, oldest first
        self.records: dict[int, PromptRecord] = {}
        self._scratch: dict[str, torch.Tensor] = {}  # reused gather buffers: fresh large tensors cost page faults each step
        self.hits = self.lookups = 0  # prefix-reuse statistics, in blocks

    @staticmethod
    def bytes_per_block(config, dtype=torch.float32, block_len: int = BLOCK_LEN) -> int:
        return 2 * config.n_layer * config.n_embd * block_len * torch.finfo(dtype).bits // 8

    # -- allocation ----------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be taken now (free, never used, or cached but unused)."""
        return len(self._free) + (self.num_blocks - self._fresh) + len(self._evictable)

    def take(self) -> int | None:
        """A zeroed block, or None when every block is held.

        Memory already resident goes first (released blocks, then the least recently used cached
        block), never-used blocks last: resident memory tracks the most tokens ever in flight,
        and the prefix cache lives in what that leaves, not in the whole pool."""
        if self._free:
            b = self._free.pop()
        elif self._evictable:
            b, _ = self._evictable.popitem(last=False)
            self._unregister(b)
        elif self._fresh < self.num_blocks:
            b, self._fresh = self._fresh, self._fresh + 1
        else:
            return None
        self._refs[b] = 1
        self.records.pop(b, None)
        for pool in (self.k, self.v):
            _zero(pool[:, b])
        return b

    def release(self, blocks: list[int]) -> None:
        for b in blocks:
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if self._key[b] is not None:
                    self._evictable[b] = None  # keep its content for reuse until the pool needs the block
                else:
                    self._free.append(b)

    def scratch(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reusable buffer of this shape (contents undefined), grown when a step needs more."""
        n = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or buf.numel() < n:
            buf = self._scratch[name] = torch.empty(int(n * 1.25), dtype=self.k.dtype, device=self.k.device)
        return buf[:n].view(shape)

    # -- prefix reuse --------------------------------------------------------------------------
    def key(self, parent: int | None, tokens: tuple[int, ...]) -> tuple:
        """The content key of a full block after block `parent` (None for a row's first block)."""
        return (ROOT if parent is None else self._uid[parent], tokens)

    def register(self, block: int, parent: int | None, tokens: tuple[int, ...]) -> None:
        """Record a full, computed block under its content (first registration wins)."""
        key = self.key(parent, tokens)
        if self._key[block] is not None or key in self._cached:
            return
        self._next_uid += 1
        self._uid[block] = self._next_uid
        self._key[block] = key
        self._cached[key] = block

    def holds_content(self, block: int) -> bool:
        """Whether the block is registered (so a prompt record may be attached to it)."""
        return self._key[block] is not None

    def cached_block(self, parent: int | None, tokens: tuple[int, ...], need_record: bool) -> int | None:
        """The registered block holding `tokens` after `parent`, without holding it (lookup holds it); None if absent."""
        b = self._cached.get(self.key(parent, tokens))
        return None if b is None or (need_record and b not in self.records) else b

    def lookup(self, parent: int | None, tokens: tuple[int, ...], need_record: bool) -> int | None:
        """The registered block holding `tokens` after `parent`, now held by the caller too; None if absent."""
        self.lookups += 1
        b = self.cached_block(parent, tokens, need_record)
        if b is None:
            return None
        self.hits += 1
        if self._refs[b] == 0:
            del self._evictable[b]
        self._refs[b] += 1
        return b

    def _unregister(self, b: int) -> None:
        del self._cached[self._key[b]]
        self._key[b] = None
        self.records.pop(b, None)

    def clear_cache(self) -> None:
        """Forget every cached block nobody holds (their memory becomes plain free blocks)."""
        while self._evictable:
            b, _ = self._evictable.popitem(last=False)
            self._unregister(b)
            self._free.append(b)


class StepKV:
    """One forward step's view of the pool: where each new token's key/value goes, and what each row attends to.

    The step's tokens are packed as (1, N): first the decode rows (one token each), then the prefill
    chunks, one row after another. For each row: its block table, the position of its first new
    token (start) and its number of new tokens. Built once per step; attend() runs per layer.
    """

    def __init__(self, pool: BlockPool, tables: list[list[int]], starts: list[int], counts: list[int]):
        self.pool = pool
        bl, dev = pool.block_len, pool.k.device
        self.num_decode = next((i for i, c in enumerate(counts) if c != 1), len(counts))
        self.prefills = list(zip(tables[self.num_decode:], starts[self.num_decode:], counts[self.num_decode:]))
        blocks, offsets = [], []
        for t, s, c in zip(tables, starts, counts):
            for p in range(s, s + c):
                blocks.append(t[p // bl])
                offsets.append(p % bl)
        self.slot_block = torch.tensor(blocks, device=dev)  # (N,)
        self.slot_offset = torch.tensor(offsets, device=dev)  # (N,)
        D = self.num_decode
        if D:
            pos = torch.tensor(starts[:D], device=dev)  # (D,) each decode token's position
            nb = max(p // bl for p in starts[:D]) + 1  # blocks the longest decode row spans
            self.decode_blocks = torch.tensor([(t[: s // bl + 1] + [0] * nb)[:nb] for t, s in zip(tables, starts[:D])], device=dev)  # (D, nb)
            first = tables[0][0]
            # one row over consecutive blocks reads the pool in place (a view, no gather)
            self.decode_view = (first, nb, starts[0] + 1) if D == 1 and tables[0][:nb] == list(range(first, first + nb)) else None
            # rows at one position need no mask: their keys are cut at that position
            self.decode_len = starts[0] + 1 if len(set(starts[:D])) == 1 else nb * bl
            self.decode_mask = None if self.decode_len < nb * bl or self.decode_view else (
                torch.arange(nb * bl, device=dev)[None, :] <= pos[:, None])[:, None, None, :]  # (D, 1, 1, S)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (N, nh, hs) for the packed tokens -> attention output (N, nh, hs); writes k, v into the pool."""
        K, V = self.pool.k[layer], self.pool.v[layer]  # (num_blocks, bl, nh, hs)
        K[self.slot_block, self.slot_offset] = k  # (N, nh, hs)
        V[self.slot_block, self.slot_offset] = v
        out = []
        D = self.num_decode
        if D:
            S = self.decode_len
            keys, vals = self._decode_kv(K, "k")[:, :, :S], self._decode_kv(V, "v")[:, :, :S]  # (D, nh, S, hs)
            y = torch.nn.functional.scaled_dot_product_attention(q[:D, :, None], keys, vals, attn_mask=self.decode_mask)  # (D, nh, 1, hs)
            out.append(y[:, :, 0])
        n = D
        for table, start, count in self.prefills:
            qi = q[n : n + count].transpose(0, 1)[None]  # (1, nh, T, hs)
            if start == 0:  # a fresh prompt: its own keys, plain causal
                ki, vi = k[n : n + count].transpose(0, 1)[None], v[n : n + count].transpose(0, 1)[None]
                y = torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, is_causal=True)
            else:  # a later chunk (or after reused blocks): attend over the row's cache, causal from `start`
                S = start + count
                nb = -(-S // self.pool.block_len)
                idx = torch.tensor(table[:nb], device=K.device)
                ki = self._gather(K, idx[None], "k")[:, :, :S]  # (1, nh, S, hs)
                vi = self._gather(V, idx[None], "v")[:, :, :S]
                qp = torch.arange(start, S, device=K.device)[:, None]
                mask = torch.arange(S, device=K.device)[None, :] <= qp  # (T, S)
                y = torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask)
            out.append(y[0].transpose(0, 1))  # (T, nh, hs)
            n += count
        return out[0] if len(out) == 1 else torch.cat(out)

    def _decode_kv(self, X: torch.Tensor, name: str) -> torch.Tensor:
        if self.decode_view is not None:
            first, nb, S = self.decode_view
            _, bl, nh, hs = X.shape
            return X[first : first + nb].view(1, nb * bl, nh, hs)[:, :S].transpose(1, 2)  # (1, nh, S, hs), a view
        return self._gather(X, self.decode_blocks, name)

    def _gather(self, X: torch.Tensor, table: torch.Tensor, name: str) -> torch.Tensor:
        """Rows' blocks gathered from one layer's pool X (num_blocks, bl, nh, hs): table (R, nb) -> (R, nh, nb * bl, hs)."""
        _, bl, nh, hs = X.shape
        R, nb = table.shape
        g = torch.index_select(X, 0, table.reshape(-1), out=self.pool.scratch(name, (R * nb, bl, nh, hs)))  # whole blocks
        return g.view(R, nb * bl, nh, hs).transpose(1, 2)  # (R, nh, S, hs), a strided view of that copy


def _zero(t: torch.Tensor) -> None:
    """t[...] = 0. On the CPU through numpy, on the calling thread: a torch op this size wakes torch's OpenMP
    team, whose threads then spin on the cores the next C decode step needs (native.py; the two steps after
    every new block ran 2-4 ms slower)."""
    if t.device.type == "cpu":
        t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().fill(0)  # numpy has no bf16; zero is zero bits
    else:
        t.zero_()
