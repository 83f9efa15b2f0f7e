"""Next-token choice as a pure function of logits, settings and an explicit torch.Generator."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import GPT2KitError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int | None = None  # keep the k most likely; None = all (clamped to the vocab)
    top_p: float | None = None  # nucleus: smallest set with mass >= top_p; None or 1.0 = all
    repetition_penalty: float = 1.0  # CTRL / HF: divide positive logits (multiply negative) of seen ids

    def __post_init__(self) -> None:
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or math.isnan(t) or math.isinf(t) or t < 0:
            raise GPT2KitError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k <= 0):
            raise GPT2KitError(f"top_k must be a positive integer (or None for no limit), got {self.top_k!r}")
        p = self.top_p
        if p is not None and (not isinstance(p, (int, float)) or isinstance(p, bool) or math.isnan(p) or not 0.0 < p <= 1.0):
            raise GPT2KitError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {p!r}")
        r = self.repetition_penalty
        if not isinstance(r, (int, float)) or isinstance(r, bool) or math.isnan(r) or math.isinf(r) or r <= 0:
            raise GPT2KitError(f"repetition_penalty must be a finite number > 0 (1 = off), got {r!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V); seen (B, V) bool marks ids already in each row's context."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p applied to logits (B, V); removed entries become -inf."""
    logits = logits / params.temperature
    V = logits.size(-1)
    if params.top_k is not None and params.top_k < V:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= params.top_p  # the first token always stays (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


BLOCK = 256  # tokens per block in the two-level inverse-CDF search


def inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first index where cumsum(w) exceeds u * sum(w), per row: w (b, V) >= 0, u (b,) in [0, 1).

    Two levels (block sums, then one block) instead of a cumsum over all V: far less work per
    step. Tokens of zero weight are never returned, even when rounding pushes the target to the end.
    """
    b, V = w.shape
    nb = -(-V // BLOCK)
    blocks = (w if V == nb * BLOCK else F.pad(w, (0, nb * BLOCK - V))).view(b, nb, BLOCK)  # (b, nb, BLOCK)
    mass = blocks.sum(-1)  # (b, nb)
    cum = mass.cumsum(-1)  # (b, nb)
    target = u * cum[:, -1]  # (b,)
    last_block = _last_positive(mass)  # (b,)
    blk = torch.minimum(torch.searchsorted(cum, target[:, None], right=True)[:, 0], last_block)  # (b,)
    rows = torch.arange(b, device=w.device)
    rest = target - (cum[rows, blk] - mass[rows, blk])  # mass still to cover inside the block
    inner = blocks[rows, blk]  # (b, BLOCK)
    j = torch.searchsorted(inner.cumsum(-1), rest[:, None], right=True)[:, 0]  # (b,)
    return blk * BLOCK + torch.minimum(j, _last_positive(inner))


def _last_positive(x: torch.Tensor) -> torch.Tensor:
    """Index of the last entry > 0 in each row of x (b, n)."""
    ar = torch.arange(x.shape[1], device=x.device)
    return torch.where(x > 0, ar, -1).max(dim=-1).values


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs (B, N), by inverse CDF from one uniform per row.

    torch.multinomial draws an exponential variate per vocabulary entry (50k per row);
    one uniform and a two-level search cost far less and sample the same distribution.
    """
    u = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=probs.dtype)  # (B,)
    return inverse_cdf(probs, u)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one id per row from logits (B, V) -> (B,) int64."""
    logits = logits.float()
    if seen is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    V = logits.size(-1)
    if params.top_k is not None and params.top_k < V:
        # Work on the k survivors only: same distribution as masking the other V - k to -inf.
        vals, ids = torch.topk(logits, params.top_k, dim=-1)  # (B, k), sorted descending
        keep = filter_logits(vals, SamplingParams(params.temperature, None, params.top_p))
        return ids.gather(-1, draw(torch.softmax(keep, dim=-1), generator)[:, None]).squeeze(-1)
    return draw(torch.softmax(filter_logits(logits, params), dim=-1), generator)
