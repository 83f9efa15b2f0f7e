"""Each step's work under a token budget and the KV pool: decoding rows first, then prompt chunks.

- Every running row that is decoding gets its one token. If the pool has no block for it, the
  newest running row is preempted: its blocks go back to the pool and it waits at the head of the
  queue, to be computed again later (vLLM's recompute preemption). Its tokens, sampler and
  generator are kept, so its output does not change.
- Rows still computing their prompt get chunks of what is left of the budget (chunked prefill):
  a long prompt is spread over several steps while the decoding rows keep producing tokens.
- Waiting rows are admitted in order while there is budget, a free row and blocks. A new row first
  takes the cached blocks that already hold its prompt's prefix (prefix reuse); a row whose next
  uncached block another row is computing right now waits for it instead of computing it twice.
"""
from __future__ import annotations

from collections import deque

from .kv import BlockPool
from .row import Row


class Scheduler:
    def __init__(self, pool: BlockPool, *, max_rows: int, max_step_tokens: int, prefix_reuse: bool = True):
        self.pool = pool
        self.max_rows, self.max_step_tokens, self.prefix_reuse = max_rows, max_step_tokens, prefix_reuse
        self.waiting: deque[Row] = deque()
        self.running: list[Row] = []
        self.preempted_total = 0

    def add(self, row: Row) -> None:
        self.waiting.append(row)

    def remove(self, row: Row) -> None:
        """Forget a row (finished or aborted) and give its blocks back."""
        if row in self.running:
            self.running.remove(row)
        elif row in self.waiting:
            self.waiting.remove(row)
        self.release(row)

    def release(self, row: Row) -> None:
        self.pool.release(row.blocks)
        row.blocks = []

    def plan(self) -> list[tuple[Row, int]]:
        """[(row, new tokens)] for this step: decoding rows first, then prompt chunks."""
        while True:
            work = self._decode()
            budget = self.max_step_tokens - len(work)
            work += self._chunks(budget)
            budget = self.max_step_tokens - sum(n for _, n in work)
            work += self._admit(budget)
            if work or not self.running:
                return work
            self._preempt(self.running[-1])  # every running row is stuck on blocks: free the newest

    # -- the three kinds of work ---------------------------------------------------------------
    def _decode(self) -> list[tuple[Row, int]]:
        work = []
        for row in list(self.running):
            if row in self.running and row.pending == 1 and self._grow_or_preempt(row):
                work.append((row, 1))
        return work

    def _chunks(self, budget: int) -> list[tuple[Row, int]]:
        work = []
        for row in self.running:
            if budget <= 0:
                break
            if row.pending > 1:
                n = self._fit(row, min(row.pending, budget))
                if n:
                    work.append((row, n))
                    budget -= n
        return work

    def _admit(self, budget: int) -> list[tuple[Row, int]]:
        work = []
        for row in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.max_rows:
                break
            if self._computing_same_prefix(row):
                continue
            if self.prefix_reuse:
                self._reuse_prefix(row)
            n = self._fit(row, min(row.pending, budget))
            if not n:  # the pool is full: keep the queue order, admit nothing more this step
                self.release(row)
                row.computed = 0
                break
            self.waiting.remove(row)
            self.running.append(row)
            work.append((row, n))
            budget -= n
        return work

    # -- blocks --------------------------------------------------------------------------------
    def _fit(self, row: Row, n: int) -> int:
        """Take blocks for up to n more tokens of row; returns how many tokens fit."""
        bl = self.pool.block_len
        while len(row.blocks) * bl < row.computed + n:
            b = self.pool.take()
            if b is None:
                return max(0, len(row.blocks) * bl - row.computed)
            row.blocks.append(b)
        return n

    def _grow_or_preempt(self, row: Row) -> bool:
        """Room for one more token of a decoding row, preempting newer rows if needed; False if row itself was preempted."""
        while not self._fit(row, 1):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is row:
                return False
        return True

    def _preempt(self, row: Row) -> None:
        self.running.remove(row)
        self.release(row)
        row.computed = 0
        self.waiting.appendleft(row)
        self.preempted_total += 1

    # -- prefix reuse --------------------------------------------------------------------------
    def _reuse_prefix(self, row: Row) -> None:
        """Take the cached blocks holding the row's full prompt blocks (never its last token: its logits are needed)."""
        if row.computed or row.blocks:
            return
        bl = self.pool.block_len
        parent = None
        for i in range((row.window_len - 1) // bl):
            b = self.pool.lookup(parent, tuple(row.span(i * bl, (i + 1) * bl)), need_record=row.wants_records)
            if b is None:
                break
            row.blocks.append(b)
            parent = b
        row.computed = len(row.blocks) * bl

    def _computing_same_prefix(self, row: Row) -> bool:
        """Whether a running row is computing, as part of its prompt, the first full block of this row's prompt that
        is not cached yet (then wait one or a few steps and reuse it instead of computing it twice). Rows that
        share only blocks already cached go ahead at once: n samples of one prompt start in the same step."""
        if not self.prefix_reuse:
            return False
        bl, parent, c = self.pool.block_len, None, 0
        full = (row.window_len - 1) // bl  # the blocks a row may reuse (never the one with its last token)
        while c < full and (b := self.pool.cached_block(parent, tuple(row.span(c * bl, (c + 1) * bl)), row.wants_records)) is not None:
            parent, c = b, c + 1
        if c == full:
            return False
        head = row.span(0, (c + 1) * bl)
        return any(not r.prompt_done and r.span(0, (c + 1) * bl) == head for r in self.running)
