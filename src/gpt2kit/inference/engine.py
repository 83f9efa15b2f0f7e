"""The engine: one batched step over every row, for every caller (generate, serve, chat, eval scoring).

    engine = Engine(model)
    rows = engine.add_job(job)            # or engine.add(prompt_ids, params, max_tokens=...)
    while engine.has_work:
        for out in engine.step():         # Outputs: new tokens, prompt log-probs, finish reasons
            ...

A step asks the Scheduler for its work (decoding rows, prompt chunks), packs every row's new
tokens into one (1, N) sequence with per-row positions, runs model.forward once over the paged
KV cache (kv.StepKV), and samples the next token of each row whose window is now computed. The
engine knows token ids only; text, stop strings and wire formats live with the callers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import GPT2KitError
from ..sampling import NO_FINITE_LOGIT, RowSampler, row_generator, sample_rows, top_logprobs
from ..sampling_params import SamplingParams
from .kv import BLOCK_LEN, BlockPool, PromptRecord, StepKV
from .native import MAX_ROWS as NATIVE_ROWS, native_step
from .request import MAX_LOGPROBS, Job
from .row import Row
from .scheduler import Scheduler
from .threads import governor, one_torch_thread, restoring_threads


@dataclass
class Output:
    row: Row
    token: int | None = None  # the new token; NO_FINITE_LOGIT when the row's logits held no finite value
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    prompt: bool = False  # the row's prompt is now computed (row.prompt_lp is complete when it was asked for)
    finish_reason: str | None = None  # "stop" (a stop id) | "length" (max_tokens) | "error" (see token and error)
    error: Exception | None = None  # sampling this row raised (its request fails; the other rows go on)


def default_kv_blocks(config, max_rows: int, dtype=torch.float32, block_len: int = BLOCK_LEN) -> int:
    """Room for max_rows full contexts, capped at a quarter of the machine's memory (never below one context)."""
    per_block = BlockPool.bytes_per_block(config, dtype, block_len)
    want = max_rows * -(-config.block_size // block_len)
    try:
        cap = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4 // per_block
    except (ValueError, OSError, AttributeError):
        cap = want
    return 1 + max(min(want, cap), -(-config.block_size // block_len))


class Engine:
    def __init__(self, model, *, kv_blocks: int | None = None, max_rows: int = 64, max_step_tokens: int = 512,
                 prefix_reuse: bool = True, block_len: int = BLOCK_LEN, adapt_threads: bool = True, native: bool = True):
        cfg = model.config
        w = model.transformer.wte.weight
        self.model, self.config, self.device = model.eval(), cfg, w.device
        kv_blocks = kv_blocks or default_kv_blocks(cfg, max_rows, w.dtype, block_len)
        context_blocks = -(-cfg.block_size // block_len)
        if kv_blocks - 1 < context_blocks:
            raise GPT2KitError(f"kv_blocks={kv_blocks} cannot hold one context of {cfg.block_size} tokens: "
                               f"give at least {context_blocks + 1} blocks of {block_len}")
        if max_rows < 1 or max_step_tokens < 1:
            raise GPT2KitError(f"max_rows and max_step_tokens must be >= 1, got {max_rows} and {max_step_tokens}")
        self.pool = BlockPool(cfg, kv_blocks, device=self.device, dtype=w.dtype, block_len=block_len)
        self.scheduler = Scheduler(self.pool, max_rows=max_rows, max_step_tokens=max_step_tokens, prefix_reuse=prefix_reuse)
        self.steps = 0
        self.threads = governor() if adapt_threads and self.device.type == "cpu" else None  # threads.py: cores others leave free
        self.native = native_step(self.model, self.pool) if native else None  # native.py: decode-only steps in C

    # -- rows in and out -----------------------------------------------------------------------
    def add(self, prompt: list[int], params: SamplingParams, *, max_tokens: int, seed: int | None = None,
            generator: torch.Generator | None = None, stop_ids=(), logprobs: int | None = None,
            prompt_logprobs: int | None = None, owner=None, index: int = 0) -> Row:
        """Queue one row; index picks its generator's stream for a seed (row_generator). Validated by the caller."""
        sampler = RowSampler(params, generator or row_generator(seed, index, self.device), prompt, self.config.vocab_size)
        row = Row(prompt, sampler, block_size=self.config.block_size, max_tokens=max_tokens, stop_ids=frozenset(stop_ids),
                  logprobs=logprobs, prompt_logprobs=prompt_logprobs, owner=owner, index=index)
        if prompt_logprobs is not None:
            row.prompt_lp = [None] * min(len(prompt), row.window_start + 1)
        self.scheduler.add(row)
        return row

    def add_job(self, job: Job, *, owner=None, stop_ids=()) -> list[Row]:
        """The job's rows in choice order: prompt p, sample j is choice p * n + j, seeded as row_generator(seed, choice)."""
        prompt_lp = job.logprobs if job.echo and job.logprobs is not None else None
        return [self.add(ids, job.params, max_tokens=job.max_tokens, seed=job.seed, stop_ids=stop_ids,
                         logprobs=job.logprobs, prompt_logprobs=prompt_lp, owner=owner, index=p * job.n + j)
                for p, ids in enumerate(job.prompts) for j in range(job.n)]

    def score(self, prompts: list[list[int]]) -> list[list[tuple[float, list[tuple[int, float]]] | None]]:
        """Each prompt's (logprob, top alternatives) per token, given the tokens before it (None for the first),
        computed as scoring rows (max_tokens 0) through the same steps and prefix cache as everything else."""
        rows = [self.add(p, SamplingParams(temperature=0), max_tokens=0, prompt_logprobs=MAX_LOGPROBS) for p in prompts]
        with restoring_threads():
            while any(r.finish_reason is None for r in rows):
                self.step()
        return [r.prompt_lp for r in rows]

    def abort(self, row: Row) -> None:
        self.scheduler.remove(row)

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.running or self.scheduler.waiting)

    @property
    def num_rows(self) -> int:
        return len(self.scheduler.running) + len(self.scheduler.waiting)

    # -- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Output]:
        work = self.scheduler.plan()
        if not work:
            return []
        self.steps += 1
        if self.threads:
            self.threads.tick()
        logits, at, native = self._forward(work)
        with one_torch_thread(native):
            return self._finish(work, logits, at)

    def _finish(self, work, logits, at) -> list[Output]:
        """Book the step's computed tokens and sample the rows whose window is done."""
        outputs, to_sample = [], []
        for (row, n), (lo, hi) in zip(work, at):
            before = row.computed
            row.computed += n
            self._register(row, before)
            if row.wants_records:
                self._prompt_logprobs(row, before, logits[lo:hi])
            if row.pending == 0:  # the window is computed: logits[hi - 1] scores the next token
                if not row.prompt_done:
                    row.prompt_done = True
                    outputs.append(Output(row, prompt=True))
                if row.max_tokens == 0:
                    outputs[-1].finish_reason = row.finish_reason = "length"
                    self.scheduler.remove(row)
                else:
                    to_sample.append((row, hi - 1))
        if to_sample:
            outputs += self._sample(to_sample, logits)
        return outputs

    def _forward(self, work: list[tuple[Row, int]]):
        """Run the step's tokens; returns the logits kept, each row's [lo, hi) range in them, and whether the C step ran."""
        if self.native and len(work) <= NATIVE_ROWS and all(n == 1 and not r.wants_records for r, n in work):
            tokens = [r.span(r.computed, r.computed + 1)[0] for r, _ in work]
            logits = self.native(tokens, [r.computed for r, _ in work], [r.blocks for r, _ in work], torch.get_num_threads())
            return logits, [(i, i + 1) for i in range(len(work))], True
        ids, pos, at, ranges = [], [], [], []
        for row, n in work:
            s = row.computed
            ids += row.span(s, s + n)
            pos += range(s, s + n)
            first = len(ids) - n if row.wants_records else len(ids) - 1  # all chunk logits for prompt log-probs
            lo = len(at)
            at += range(first, len(ids)) if (row.wants_records or row.pending == n) else []
            ranges.append((lo, len(at)))
        kv = StepKV(self.pool, [r.blocks for r, _ in work], [r.computed for r, _ in work], [n for _, n in work])
        idx = torch.tensor([ids], device=self.device)  # (1, N)
        positions = torch.tensor(pos, device=self.device)  # (N,)
        logits, _ = self.model(idx, kv=kv, positions=positions, logits_at=torch.tensor(at, device=self.device, dtype=torch.long))
        return logits, ranges, False  # logits (R, V)

    def _register(self, row: Row, before: int) -> None:
        """Offer the blocks this step completed to the prefix cache (first registration of a content wins)."""
        bl = self.pool.block_len
        for i in range(before // bl, row.computed // bl):
            parent = row.blocks[i - 1] if i else None
            self.pool.register(row.blocks[i], parent, tuple(row.span(i * bl, (i + 1) * bl)))

    def _sample(self, to_sample: list[tuple[Row, int]], logits: torch.Tensor) -> list[Output]:
        """Sample each group of rows with equal filters as one batch; a group whose sampling raises fails alone."""
        groups: dict = {}
        for row, i in to_sample:
            groups.setdefault(row.sampler.params.filters, []).append((row, i))
        outputs = []
        for group in groups.values():
            rows = [r for r, _ in group]
            lg = _rows(logits, [i for _, i in group])  # (R, V)
            try:
                tokens = sample_rows(lg, [r.sampler for r in rows])
            except Exception as e:
                for row in rows:
                    outputs.append(Output(row, finish_reason="error", error=e))
                    self.scheduler.remove(row)
                continue
            outputs += self._advance(rows, tokens, self._token_logprobs(rows, lg, tokens))
        return outputs

    def _advance(self, rows: list[Row], tokens: list[int], lps: list[tuple]) -> list[Output]:
        """Append each row's new token; finish rows that are done, slide windows that are full."""
        outputs = []
        for row, t, lp in zip(rows, tokens, lps):
            out = Output(row, t, *lp)
            if t == NO_FINITE_LOGIT:
                out.finish_reason = "error"
            else:
                row.append(t)
                out.finish_reason = row.check_done()
            if out.finish_reason:
                row.finish_reason = out.finish_reason
                self.scheduler.remove(row)
            elif row.slide():
                self.scheduler.release(row)
            outputs.append(out)
        return outputs

    @staticmethod
    def _token_logprobs(rows: list[Row], logits: torch.Tensor, tokens: list[int]) -> list[tuple]:
        want = [i for i, r in enumerate(rows) if r.logprobs is not None and tokens[i] != NO_FINITE_LOGIT]
        out = [(None, None)] * len(rows)
        if want:
            chosen = torch.tensor([tokens[i] for i in want], device=logits.device)
            lps, tops = top_logprobs(logits[want], chosen, max(rows[i].logprobs for i in want))
            for i, lp, top in zip(want, lps, tops):
                out[i] = (lp, top[: rows[i].logprobs])
        return out

    # -- prompt log-probabilities ----------------------------------------------------------------
    def _prompt_logprobs(self, row: Row, before: int, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens this chunk predicts (logits (n, V) at window positions before..)."""
        self._from_records(row, before)
        ws = row.window_start
        lp = torch.log_softmax(logits.float(), dim=-1)  # (n, V); row j predicts token ws + before + j + 1
        first = ws + before + 1
        last = min(ws + row.computed + 1, row.prompt_len)  # one past the last prompt token predicted
        lo = max(first, len(row.prompt_lp))
        if last > lo:
            rows = lp[lo - first : last - first]
            chosen = rows.gather(1, torch.tensor(row.tokens[lo:last], device=lp.device)[:, None])[:, 0].tolist()
            vals, ids = torch.topk(rows, MAX_LOGPROBS, dim=-1)
            row.prompt_lp += [(c, list(zip(i, v))) for c, i, v in zip(chosen, ids.tolist(), vals.tolist())]
        self._store_records(row, before, lp)

    def _from_records(self, row: Row, before: int) -> None:
        """Prompt log-probabilities carried by the cached blocks the row reused (window positions <= before)."""
        bl, ws = self.pool.block_len, row.window_start
        while len(row.prompt_lp) < min(ws + before + 1, row.prompt_len):
            i = len(row.prompt_lp) - ws  # window position
            rec = self.pool.records[row.blocks[(i - 1) // bl]]
            if i % bl:  # inside a reused block
                lp, top = float(rec.logprob[i % bl]), list(zip(rec.top_ids[i % bl].tolist(), rec.top_lp[i % bl].tolist()))
            else:  # the first token after the reused blocks: the last block's next-token distribution
                vals, ids = torch.topk(rec.next_lp, MAX_LOGPROBS)
                lp, top = float(rec.next_lp[row.tokens[ws + i]]), list(zip(ids.tolist(), vals.tolist()))
            row.prompt_lp.append((lp, top))

    def _store_records(self, row: Row, before: int, lp: torch.Tensor) -> None:
        """Attach prompt log-probabilities to the registered blocks this chunk completed (lp (n, V) of the chunk)."""
        bl, ws = self.pool.block_len, row.window_start
        for i in range(before // bl, row.computed // bl):
            lo = ws + i * bl
            entries = row.prompt_lp[lo : lo + bl]
            b = row.blocks[i]
            if len(entries) < bl or not self.pool.holds_content(b) or b in self.pool.records:
                continue
            nan = (float("nan"), [(0, float("nan"))] * MAX_LOGPROBS)
            entries = [nan if e is None else e for e in entries]
            self.pool.records[b] = PromptRecord(
                torch.tensor([e[0] for e in entries]),
                torch.tensor([[t for t, _ in e[1]] for e in entries], dtype=torch.int32),
                torch.tensor([[v for _, v in e[1]] for e in entries]),
                lp[(i + 1) * bl - 1 - before].clone())


def _rows(logits: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """logits[idx]: a view when idx is a run of consecutive rows (a C step's rows are), not a copy (b8: 0.36 ms)."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return logits[idx[0] : idx[0] + len(idx)]
    return logits[idx]
