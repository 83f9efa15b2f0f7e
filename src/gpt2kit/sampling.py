"""The one sampler: next-token choice as a pure function of logits, settings and explicit generators.

Every caller (gpt2kit.generate, the server, chat) samples through RowSampler and sample_rows:
each row has its own torch.Generator and draws one uniform per token (inverse CDF), so a row's
tokens depend on its own seed only, never on which rows it was batched with. Penalties and
logit_bias adjust each row's logits first; rows are then grouped by their filters (temperature,
top-k, top-p) and each group is filtered and drawn as one batch.

The sampler is total: a row whose distribution degenerates (NaN logits, overflow to inf, no
mass left) takes the argmax of its finite logits instead, and a row with no finite logit at
all gets NO_FINITE_LOGIT (-1), which callers turn into an error for that row's request only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import GPT2KitError

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


TOPK_BLOCK = 64  # entries per block in the two-level top-k


def topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(logits, k, dim=-1) for logits (b, V): values sorted descending and their ids.

    Two levels when V is large: every one of the k largest entries lies in one of the k blocks
    with the largest maxima, so a top-k over those k blocks finds them; that reads V entries once
    and sorts k * TOPK_BLOCK, where torch.topk over all V costs ~70 us per 50k row on one thread.
    """
    b, V = logits.shape
    nb = V // TOPK_BLOCK
    if k * TOPK_BLOCK * 8 > V:
        return torch.topk(logits, k, dim=-1)
    main = logits[:, : nb * TOPK_BLOCK].unflatten(1, (nb, TOPK_BLOCK))  # (b, nb, B), a view
    blocks = torch.topk(main.amax(-1), k, dim=-1).indices  # (b, k)
    tail = logits[:, nb * TOPK_BLOCK :]  # (b, V mod B), the entries no block holds
    cand = torch.cat([main[torch.arange(b, device=logits.device)[:, None], blocks].flatten(1), tail], dim=1)  # (b, k * B + tail)
    vals, j = torch.topk(cand, k, dim=-1)  # (b, k)
    in_block = j < k * TOPK_BLOCK
    block_ids = blocks.gather(1, (j // TOPK_BLOCK).clamp(max=k - 1)) * TOPK_BLOCK + j % TOPK_BLOCK
    return vals, torch.where(in_block, block_ids, j - k * TOPK_BLOCK + nb * TOPK_BLOCK)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """argmax per row of logits (b, V), total: NaN and inf are skipped (see finite_argmax)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:  # numpy: after a C step each torch op costs ~50 us
        a = logits.detach().numpy()
        ids = a.argmax(-1)  # (b,)
        ok = np.isfinite(a[np.arange(a.shape[0]), ids])
        return torch.from_numpy(ids) if ok.all() else torch.where(torch.from_numpy(ok), torch.from_numpy(ids), finite_argmax(logits))
    ids = torch.argmax(logits, dim=-1)
    return make_total(ids, torch.isfinite(logits.gather(-1, ids[:, None])[:, 0]), logits)


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


def pick(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    """One id per row of float logits (B, V) given one uniform per row u (B,) -> (B,) int64 (NO_FINITE_LOGIT where none is finite).

    Inverse CDF from one uniform: torch.multinomial would draw an exponential variate per vocabulary
    entry (50k per row); one uniform and a two-level search cost far less and sample the same distribution.

    With top-k the draw runs over the k survivors only: the same distribution as masking the other V - k to -inf.
    """
    if params.greedy:
        return greedy(logits)
    V = logits.size(-1)
    if params.top_k is not None and params.top_k < V:
        vals, ids = topk(logits, params.top_k)  # (B, k), sorted descending
        probs = torch.softmax(filter_logits(vals, SamplingParams(params.temperature, None, params.top_p)), dim=-1)
        j, ok = valid_draw(inverse_cdf(probs, u), probs)  # (B,) index among the k
        return make_total(ids.gather(-1, j[:, None])[:, 0], ok, logits)
    filtered = logits if params.temperature == 1.0 and (params.top_p or 1.0) >= 1.0 else filter_logits(logits, params)
    probs = torch.softmax(filtered, dim=-1)  # (B, V)
    return make_total(*valid_draw(inverse_cdf(probs, u), probs), logits)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one id per row from logits (B, V) -> (B,) int64, drawing the B uniforms from one generator."""
    logits = logits.float()
    if seen is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    u = torch.rand(logits.shape[0], generator=generator, device=logits.device)  # (B,)
    return pick(logits, params, u)


def row_generator(seed: int | None, row: int, device="cpu") -> torch.Generator:
    """Row 0 uses the seed itself; row j > 0 a seed derived from (seed, j), so choice 0 of n=2 is the n=1 answer."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    elif row == 0:
        g.manual_seed(seed)
    else:
        g.manual_seed(int(np.random.SeedSequence(seed % 2**128, spawn_key=(row,)).generate_state(1, np.uint64)[0]))
    return g


class RowSampler:
    """One row's sampling state: its settings, its generator, and the history its penalties need.

    repetition_penalty (CTRL, HF) counts the prompt and the output; presence and frequency
    penalties (OpenAI, vLLM) count the output only.
    """

    def __init__(self, params: SamplingParams, generator: torch.Generator, prompt: list[int], vocab_size: int):
        self.params, self.generator = params, generator
        dev = generator.device
        self.seen = self.counts = self.bias = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=dev)
            self.seen[prompt] = True
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab_size, device=dev)
        if params.logit_bias:
            ids = [t for t, _ in params.logit_bias]
            if max(ids) >= vocab_size:
                raise GPT2KitError(f"logit_bias names token {max(ids)} but the vocabulary has ids 0..{vocab_size - 1}")
            self.bias = (torch.tensor(ids, device=dev), torch.tensor([b for _, b in params.logit_bias], device=dev))

    @property
    def adjusts(self) -> bool:
        return self.seen is not None or self.counts is not None or self.bias is not None

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """This row's logits (V,) after logit_bias and the penalties."""
        if self.bias is not None:
            logits = logits.index_add(0, self.bias[0], self.bias[1])
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.params.repetition_penalty)
        if self.counts is not None:
            p = self.params
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()
        return logits

    def observe(self, token: int) -> None:
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1


def sample_rows(logits: torch.Tensor, rows: list[RowSampler]) -> list[int]:
    """Next token for each row of logits (R, V) (extra -inf columns allowed): adjusted per row, then drawn
    in groups of equal filters with one uniform from each row's own generator."""
    logits = logits.float()
    if any(r.adjusts for r in rows):
        logits = torch.stack([r.adjust(x) if r.adjusts else x for x, r in zip(logits, rows)])
    u = None if all(r.params.greedy for r in rows) else torch.cat(  # (R,); a greedy row draws nothing
        [torch.zeros(1, device=logits.device) if r.params.greedy else torch.rand(1, generator=r.generator, device=logits.device) for r in rows])
    groups: dict[SamplingParams, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.params.filters, []).append(i)
    if len(groups) == 1:
        return pick(logits, next(iter(groups)), u).tolist()
    out = [0] * len(rows)
    for params, idx in groups.items():
        for i, t in zip(idx, pick(logits[idx], params, u[idx]).tolist()):
            out[i] = t
    return out


def top_logprobs(logits: torch.Tensor, chosen: torch.Tensor, n: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Model log-probabilities (before penalties, temperature and filters): logits (b, V), chosen (b,) -> lp, top-n."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
    chosen_lp = lp.gather(1, chosen[:, None])[:, 0].tolist()
    if n == 0:
        return chosen_lp, [[] for _ in chosen_lp]
    vals, ids = torch.topk(lp, n, dim=-1)  # (b, n)
    return chosen_lp, [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
