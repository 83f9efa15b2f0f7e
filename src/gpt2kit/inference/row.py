"""One sequence in the engine: its tokens, its place in the KV cache, its sampler and its limits.

The KV window is tokens[window_start:]: positions 0.. of the model. It starts as the last
block_size tokens of the prompt; when a generated token would need position block_size, the
window slides to the last block_size tokens and is computed again (nanoGPT's crop: each token
past the context is predicted from the block_size tokens before it).
"""
from __future__ import annotations

from ..sampling import RowSampler


class Row:
    def __init__(self, prompt: list[int], sampler: RowSampler, *, block_size: int, max_tokens: int,
                 stop_ids: frozenset[int] = frozenset(), logprobs: int | None = None,
                 prompt_logprobs: int | None = None, owner=None, index: int = 0):
        self.tokens = list(prompt)
        self.prompt_len = len(prompt)
        self.block_size = block_size
        self.window_start = max(0, len(prompt) - block_size)
        self.computed = 0  # window tokens whose keys/values are in the cache
        self.blocks: list[int] = []  # block table of the window
        self.sampler = sampler
        self.max_tokens, self.stop_ids = max_tokens, stop_ids
        self.logprobs = logprobs  # top-N per generated token (None: no logprobs)
        self.prompt_logprobs = prompt_logprobs  # top-N per prompt token (None: not wanted)
        # prompt_lp[i]: (logprob, top) of prompt token i given the tokens before it (in its window); None for
        # the first window token, which nothing predicts. Filled as the prompt is computed (or from cached blocks).
        self.prompt_lp: list[tuple[float, list[tuple[int, float]]] | None] = []
        self.prompt_done = False  # the prompt's last token has been computed once
        self.finish_reason: str | None = None
        self.owner, self.index = owner, index  # the caller's bookkeeping

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def window_len(self) -> int:
        return len(self.tokens) - self.window_start

    def span(self, a: int, b: int) -> list[int]:
        """Window tokens a..b-1 (a slice of that length, never a copy of the whole history: this runs every step)."""
        return self.tokens[self.window_start + a : self.window_start + b]

    @property
    def pending(self) -> int:
        """Window tokens still to run through the model (1 for a decoding row)."""
        return len(self.tokens) - self.window_start - self.computed

    @property
    def wants_records(self) -> bool:
        """Whether this row needs logits at every prompt position (prompt log-probabilities) still to come."""
        return self.prompt_logprobs is not None and not self.prompt_done

    def append(self, token: int) -> None:
        self.tokens.append(token)
        self.sampler.observe(token)

    def slide(self) -> bool:
        """Move the window to the last block_size tokens if the newest token falls outside the context.
        True when it moved: the caller releases the blocks and the window is computed again."""
        if len(self.tokens) - self.window_start <= self.block_size:
            return False
        self.window_start = len(self.tokens) - self.block_size
        self.computed = 0
        return True

    def check_done(self) -> str | None:
        """The finish reason after the last token, if the row is done."""
        if self.generated and self.tokens[-1] in self.stop_ids:
            return "stop"
        if self.generated >= self.max_tokens:
            return "length"
        return None
