"""Next-token choice as a pure function of logits, settings and an explicit torch.Generator.

The sampler is total: a row whose distribution degenerates (NaN logits, overflow to inf, no
mass left) takes the argmax of its finite logits instead, and a row with no finite logit at
all gets NO_FINITE_LOGIT (-1), which callers turn into an error for that row's request only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .sampling_params import SamplingParams  # its torch-free home; re-exported here

NO_FINITE_LOGIT = -1


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
        drop_sorted = mass_before >= params.top_p
        drop_sorted[..., 0] = False  # the most likely token always stays, even if top_p rounds to 0 in float32
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


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """argmax per row of logits (b, V), total: NaN and inf are skipped (see finite_argmax)."""
    ids = torch.argmax(logits, dim=-1)
    return make_total(ids, torch.isfinite(logits.gather(-1, ids[:, None])[:, 0]), logits)


def drawn(probs: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    return valid_draw(draw(probs, generator), probs)


def valid_draw(j: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawn indices j (b,) clamped into range, and whether each is an index of positive probability
    in probs (b, N): False where a row's probabilities are NaN or all zero (inverse_cdf then gives j < 0)."""
    safe = j.clamp(0, probs.shape[-1] - 1)
    return safe, (j == safe) & (probs.gather(-1, safe[:, None])[:, 0] > 0)


def make_total(ids: torch.Tensor, ok: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """ids where ok, else the finite argmax of that row of logits (b, V); the check costs b elements, not b x V."""
    if bool(ok.all()):
        return ids
    return torch.where(ok, ids, finite_argmax(logits))


def finite_argmax(logits: torch.Tensor) -> torch.Tensor:
    """argmax over each row's finite entries; NO_FINITE_LOGIT for a row without one."""
    z = torch.where(torch.isfinite(logits), logits, float("-inf"))
    best, ids = z.max(dim=-1)
    return torch.where(torch.isfinite(best), ids, NO_FINITE_LOGIT)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one id per row from logits (B, V) -> (B,) int64; NO_FINITE_LOGIT for a row without a finite logit."""
    logits = logits.float()
    if seen is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return greedy(logits)
    V = logits.size(-1)
    if params.top_k is not None and params.top_k < V:
        # Work on the k survivors only: same distribution as masking the other V - k to -inf.
        vals, ids = torch.topk(logits, params.top_k, dim=-1)  # (B, k), sorted descending
        keep = filter_logits(vals, SamplingParams(params.temperature, None, params.top_p))
        j, ok = drawn(torch.softmax(keep, dim=-1), generator)  # (B,) index among the k
        return make_total(ids.gather(-1, j[:, None])[:, 0], ok, logits)
    return make_total(*drawn(torch.softmax(filter_logits(logits, params), dim=-1), generator), logits)
