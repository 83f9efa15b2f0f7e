"""The batching engine: one background thread runs every active row in one forward pass per step.

Requests arrive from the event loop (submit), wait in a bounded queue, and are admitted while
fewer than max_concurrency run and their rows fit in max_batch. Admission prefills each prompt
into a KV slot; then each step samples one token for every active row and runs all of them
together through SlotPool.step. Output goes back to the event loop with call_soon_threadsafe,
so generation never blocks it. A cancelled request (client gone) leaves at the next step.
A failure inside one request (its admission, its sampling, its text) ends that request only,
as a RequestFailed; only a failure of the shared forward pass ends every running request.

Each row samples with its own torch.Generator (one uniform per token, see rows.sample_rows), so
a seeded request gives the same text streamed or not, run after run. Bit-equality across
different batch compositions is not promised: matmul kernels for other batch sizes round
differently (~1e-6 in the logits), which can, rarely, move a sampled token; greedy output only
changes if two logits tie that closely.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque

import torch

from ..errors import GPT2KitError
from ..sampling import NO_FINITE_LOGIT
from ..sampling_params import NAN_LOGITS_MESSAGE
from .rows import Job, Piece, Row, TokenLogprob, row_generator, sample_rows, top_logprobs
from .slots import SlotPool

_DONE = object()


class Busy(Exception):
    """The server is at max_concurrency and its queue is full (HTTP 429)."""


class RequestFailed(RuntimeError):
    """One request failed inside the engine; the others go on. client_error: the client's input caused
    it (HTTP 400), else a server fault (500)."""

    def __init__(self, message: str, client_error: bool = False):
        super().__init__(message)
        self.client_error = client_error


class Cancelled(Exception):
    """Raised by a Generation's iterator once it was cancelled, so its reader never waits forever."""


class Generation:
    """The event-loop side of one request: an async iterator over lists of Pieces."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, engine: "Engine"):
        self.job = job
        self.engine = engine
        self.loop = loop
        self.cancelled = False
        self.prompt_tokens = sum(len(p) for p in job.prompts)
        self.completion_tokens = 0
        self.done = False  # the reader saw the end
        self._queue: asyncio.Queue = asyncio.Queue()

    def cancel(self) -> None:
        """Stop generating (idempotent, any thread); the engine drops the rows at its next step."""
        if not self.cancelled and not self.done:
            self.cancelled = True
            self._post(Cancelled())  # ends the reader, who may be waiting for the next piece
            self.engine._wake()

    def _post(self, item) -> None:  # any thread -> event loop
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True

    async def __aiter__(self):
        while True:
            item = await self._queue.get()
            if item is _DONE:
                self.done = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class Engine:
    def __init__(self, model, tokenizer, *, max_batch: int = 64, max_concurrency: int = 8, max_queue: int = 32):
        if max_batch < 1 or max_concurrency < 1 or max_queue < 0:
            raise GPT2KitError("max_batch and max_concurrency must be >= 1 and max_queue >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch, self.max_concurrency, self.max_queue = max_batch, max_concurrency, max_queue
        self.device = model.transformer.wte.weight.device
        self.eot = tokenizer.eot_token
        self.pool = SlotPool(model, max_batch)
        self._cond = threading.Condition()
        self._waiting: deque[Generation] = deque()
        self._running: list[Generation] = []
        self._rows: list[Row] = []  # active rows; row i lives in KV slot i
        self._closed = False
        self.completed_total = self.cancelled_total = self.rejected_total = 0
        self._thread = threading.Thread(target=self._loop, name="gpt2kit-engine", daemon=True)
        self._thread.start()

    # -- event-loop side ---------------------------------------------------------------------
    def submit(self, job: Job) -> Generation:
        if job.num_rows > self.max_batch:
            raise GPT2KitError(f"this request needs {job.num_rows} rows (prompts x n) but the server batches at most {self.max_batch}")
        gen = Generation(job, asyncio.get_running_loop(), self)
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._running) + len(self._waiting) >= self.max_concurrency + self.max_queue:
                self.rejected_total += 1
                raise Busy(f"the server is busy ({self.max_concurrency} generating, {self.max_queue} queued); retry shortly")
            self._waiting.append(gen)
            self._cond.notify()
        return gen

    def stats(self) -> dict:
        with self._cond:
            return {
                "active": len(self._running) + len(self._waiting),
                "running": len(self._running),
                "queued": len(self._waiting),
                "rows": len(self._rows),
                "completed_total": self.completed_total,
                "cancelled_total": self.cancelled_total,
                "rejected_total": self.rejected_total,
            }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                if not self._closed and not self._rows and not self._waiting:
                    self.pool.release()  # idle: give the KV memory back
                while not self._closed and not self._rows and not self._waiting:
                    self._cond.wait()
                if self._closed:
                    for g in [*self._running, *self._waiting]:
                        g._post(RuntimeError("the server is shutting down"))
                    return
                self._drop_cancelled_waiting()
                admitted = []
                while (self._waiting and len(self._running) < self.max_concurrency
                       and len(self._rows) + sum(g.job.num_rows for g in admitted) + self._waiting[0].job.num_rows <= self.max_batch):
                    g = self._waiting.popleft()
                    self._running.append(g)
                    admitted.append(g)
            for g in admitted:
                if not g.cancelled:
                    try:
                        self._admit(g)
                    except Exception as e:  # this request's own failure: the others go on
                        self._fail(g, e)
            self._drop_cancelled_running()
            if self._rows:
                try:
                    self._step()
                except Exception as e:  # the shared forward pass failed (a bug, OOM): fail what is running
                    for g in list(self._running):
                        self._fail(g, e)

    def _fail(self, g: Generation, e: Exception) -> None:
        """End one request with an error: GPT2KitError is the client's input (400), anything else a fault (500)."""
        if not isinstance(e, RequestFailed):
            client = isinstance(e, GPT2KitError)
            e = RequestFailed(str(e) if client else f"generation failed: {type(e).__name__}: {e}", client_error=client)
        g._post(e)
        self._finish(g, cancelled=False)

    def _drop_cancelled_waiting(self) -> None:
        keep = deque(g for g in self._waiting if not g.cancelled)
        self.cancelled_total += len(self._waiting) - len(keep)
        self._waiting = keep

    def _drop_cancelled_running(self) -> None:
        for g in [g for g in self._running if g.cancelled]:
            self._finish(g, cancelled=True)

    def _finish(self, g: Generation, cancelled: bool) -> None:
        self._remove_rows([r for r in self._rows if r.gen is g])
        with self._cond:
            if g in self._running:
                self._running.remove(g)
                if cancelled:
                    self.cancelled_total += 1
                else:
                    self.completed_total += 1
        if not cancelled:
            g._post(_DONE)

    def _remove_rows(self, gone: list[Row]) -> None:
        """Drop rows, keeping the survivors in slots 0..B-1 by moving the last row into each hole."""
        for r in gone:
            slot = self._rows.index(r)
            last = self._rows.pop()
            if last is not r:
                self.pool.copy(len(self._rows), slot, last.length)
                self._rows[slot] = last

    def _admit(self, g: Generation) -> None:
        job, tok = g.job, self.tokenizer
        self.pool.ensure(len(self._rows) + job.num_rows)
        out: list[Piece] = []
        for p, ids in enumerate(job.prompts):
            slot = len(self._rows)
            want_prompt_lp = job.echo and job.logprobs is not None
            logits = self.pool.prefill(slot, ids, all_logits=want_prompt_lp)  # (T or 1, V)
            prompt_lp = self._prompt_logprobs(ids, logits, job.logprobs) if want_prompt_lp else None
            for j in range(job.n):
                index = p * job.n + j
                row = Row(g, index, ids, tok, row_generator(job.seed, index, self.device), self.pool.logits.shape[1])
                if j:
                    self.pool.copy(slot, slot + j, len(ids))
                self._rows.append(row)
                if job.echo:
                    # prompt bytes go through the row's decoder, so a character split at the
                    # prompt's end is completed by the first generated token, not mangled
                    text = "".join(row.streamer.decoder.push(t) for t in ids)
                    toks = None
                    if prompt_lp is not None:
                        toks = [TokenLogprob(t, lp, top, row.advance_offset(tok.token_bytes(t))) for t, (lp, top) in zip(ids, prompt_lp)]
                    else:
                        row.text_len = len(text)
                    out.append(Piece(index, text, toks))
        if job.max_tokens == 0:  # nothing to sample: the echo (with its logprobs) is the answer
            out = self._end_at_prompt(g, out)
        if out:
            g._post(out)
        if job.max_tokens == 0:
            self._finish(g, cancelled=False)

    def _end_at_prompt(self, g: Generation, echoed: list[Piece]) -> list[Piece]:
        """max_tokens 0: each row's last Piece, finished with "length" (the echo's held-back bytes flushed)."""
        by_index = {p.index: p for p in echoed}
        out = []
        for r in [r for r in self._rows if r.gen is g]:
            p = by_index.get(r.index) or Piece(r.index, "", [] if g.job.logprobs is not None else None)
            p.text += r.streamer.decoder.flush()
            p.finish_reason = "length"
            out.append(p)
        return out

    @staticmethod
    def _prompt_logprobs(ids: list[int], logits: torch.Tensor, n: int):
        """[(logprob, top)] per prompt token; the first has none (nothing predicts it)."""
        if len(ids) == 1:
            return [(None, None)]
        chosen = torch.tensor(ids[1:], device=logits.device)
        lp, top = top_logprobs(logits[:-1], chosen, n)
        return [(None, None)] + list(zip(lp, top))

    def _step(self) -> None:
        rows = self._rows
        B = len(rows)
        logits = self.pool.logits[:B]  # (B, V): row i's next-token scores sit at slot i
        tokens = [0] * B
        failed: dict[Generation, Exception] = {}
        by_params: dict = {}
        for i, r in enumerate(rows):
            by_params.setdefault(r.job.params, []).append(i)
        for params, idx in by_params.items():
            sub = logits if len(idx) == B else logits[idx]  # (b, V)
            try:
                for i, t in zip(idx, sample_rows(sub, [rows[i] for i in idx], params)):
                    tokens[i] = t
                    if t == NO_FINITE_LOGIT:
                        failed[rows[i].gen] = RequestFailed(NAN_LOGITS_MESSAGE)
            except Exception as e:  # only the requests sampled with these settings fail
                failed.update((rows[i].gen, e) for i in idx)
        lp_idx = [i for i, r in enumerate(rows) if r.job.logprobs is not None and r.gen not in failed]
        lp_info = {}
        if lp_idx:
            chosen = torch.tensor([tokens[i] for i in lp_idx], device=self.device)
            lps, tops = top_logprobs(logits[lp_idx], chosen, max(rows[i].job.logprobs for i in lp_idx))
            for i, lp, top in zip(lp_idx, lps, tops):
                lp_info[i] = (lp, top[: rows[i].job.logprobs])

        pieces: dict[Generation, list[Piece]] = {}
        finished: list[Row] = []
        for i, r in enumerate(rows):
            if r.gen in failed:
                continue
            try:
                piece = self._take(r, tokens[i], lp_info.get(i))
            except Exception as e:  # e.g. the row's text could not be decoded: its request fails alone
                failed[r.gen] = e
                continue
            if piece is not None:
                pieces.setdefault(r.gen, []).append(piece)
                if piece.finish_reason:
                    finished.append(r)
        for g, ps in pieces.items():
            if g not in failed:
                g._post(ps)
        for g, e in failed.items():
            self._fail(g, e)
        self._remove_rows([r for r in finished if r.gen not in failed])
        for g in {r.gen for r in finished} - failed.keys():
            if not any(r.gen is g for r in self._rows):
                self._finish(g, cancelled=False)
        if self._rows:
            toks = torch.tensor([r.token for r in self._rows], device=self.device)  # (B,)
            pos = torch.tensor([r.length for r in self._rows], device=self.device)  # (B,)
            self.pool.step(toks, pos)  # next logits land in pool.logits[:B]
            for r in self._rows:
                r.length += 1

    def _take(self, r: Row, t: int, lp) -> Piece | None:
        """Account for token t of row r; return the Piece to emit, if any."""
        r.generated += 1
        r.gen.completion_tokens += 1
        r.token = t
        if r.seen is not None:
            r.seen[t] = True
        finish = None
        text = ""
        if t == self.eot:
            finish = "stop"  # end of text: not part of the output
        else:
            if lp is not None:
                r.pending.append(TokenLogprob(t, lp[0], lp[1], r.advance_offset(self.tokenizer.token_bytes(t))))
            text = r.streamer.push(t)
            if r.streamer.stopped:
                finish = "stop"
        if finish is None and (r.generated >= r.job.max_tokens or r.length >= self.config.block_size):
            finish = "length"  # max_tokens reached, or the context is full
        if finish and not r.streamer.stopped:
            text += r.streamer.flush()
        if not text and not finish:
            return None
        toks, r.pending = (r.pending, []) if r.job.logprobs is not None else (None, r.pending)
        return Piece(r.index, text, toks, finish)
