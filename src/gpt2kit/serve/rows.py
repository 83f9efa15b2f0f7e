"""One generating row (one choice of one request) and the per-step work done on its token.

A row owns everything that makes its output a function of its own seed only: its
torch.Generator, its TextStreamer (stop strings, whole UTF-8 characters) and its
repetition-penalty mask. Batched with any other rows, it samples the same tokens.
Its next-token logits live in the SlotPool, at its slot.
"""
from __future__ import annotations

import codecs

import numpy as np
import torch

from ..inference.request import Job, Piece, TokenLogprob  # noqa: F401  (re-exported)
from ..streaming import TextStreamer
from ..sampling import (SamplingParams, apply_repetition_penalty, filter_logits, greedy, inverse_cdf, make_total,
                        valid_draw)


def row_generator(seed: int | None, row: int, device) -> torch.Generator:
    """Row 0 uses the seed itself; row j > 0 a seed derived from (seed, j), so choice 0 of n=2 is the n=1 answer."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    elif row == 0:
        g.manual_seed(seed)
    else:
        g.manual_seed(int(np.random.SeedSequence(seed % 2**128, spawn_key=(row,)).generate_state(1, np.uint64)[0]))
    return g


class Row:
    def __init__(self, gen, index: int, prompt: list[int], tokenizer, generator: torch.Generator, width: int):
        self.gen = gen  # the Generation this row belongs to
        self.index = index  # choice index in the response
        job: Job = gen.job
        self.job = job
        self.prompt_len = len(prompt)
        self.length = len(prompt)  # positions filled in the KV cache
        self.generated = 0
        self.generator = generator
        self.streamer = TextStreamer(tokenizer, job.stop, prev=prompt[-1] if prompt else None)
        self.offsets = codecs.getincrementaldecoder("utf-8")(errors="replace")  # text_offset bookkeeping
        self.text_len = 0
        self.pending: list[TokenLogprob] = []  # tokens whose text is not yet emitted
        self.token: int | None = None  # last sampled token, fed at the next step
        self.seen = None
        if job.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(width, dtype=torch.bool, device=generator.device)  # width: the pool's padded logits
            self.seen[prompt] = True

    def advance_offset(self, token_bytes: bytes) -> int:
        start = self.text_len
        self.text_len += len(self.offsets.decode(token_bytes))
        return start




def sample_rows(logits: torch.Tensor, rows: list[Row], params: SamplingParams) -> list[int]:
    """Next token for rows sharing params: float logits (b, V) filtered as one batch, one uniform draw per row.

    V may be padded with -inf columns (the SlotPool pads to a multiple of BLOCK, so no copy is needed).

    Inverse-CDF sampling takes a single number from each row's own generator, so a row's
    tokens depend on its seed only, never on which rows it was batched with (torch.multinomial
    would draw V numbers per row: one call per row, ~50x slower at GPT-2's vocabulary).
    A row without a finite logit gets NO_FINITE_LOGIT (see sampling.py).
    """
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, torch.stack([r.seen for r in rows]), params.repetition_penalty)
    if params.greedy:
        return greedy(logits).tolist()
    filtered = logits
    if params.temperature != 1.0 or params.top_k is not None or (params.top_p or 1.0) < 1.0:
        filtered = filter_logits(logits, params)  # removed tokens at -inf
    probs = torch.softmax(filtered, dim=-1)  # (b, V), one fused pass
    u = torch.cat([torch.rand(1, generator=r.generator, device=probs.device) for r in rows])  # (b,)
    j = inverse_cdf(probs, u)  # (b,), negative where a row has no positive mass
    return make_total(*valid_draw(j, probs), logits).tolist()


def top_logprobs(logits: torch.Tensor, chosen: torch.Tensor, n: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Model log-probabilities (before temperature and filters): logits (b, V), chosen (b,) -> lp, top-n."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
    chosen_lp = lp.gather(1, chosen[:, None])[:, 0].tolist()
    if n == 0:
        return chosen_lp, [[] for _ in chosen_lp]
    vals, ids = torch.topk(lp, n, dim=-1)  # (b, n)
    return chosen_lp, [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
