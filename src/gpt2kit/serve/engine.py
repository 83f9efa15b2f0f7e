"""The server's side of the engine: one background thread steps the shared inference engine.

Requests arrive from the event loop (submit), wait in a bounded queue, and enter the inference
engine (inference/engine.py) while fewer than max_concurrency run. There their rows are
scheduled step by step: decoding rows every step, prompts in chunks under the step's token
budget, KV blocks from the paged pool (a full pool makes rows wait, never fail). Output goes
back to the event loop with call_soon_threadsafe, so generation never blocks it. A cancelled
request (client gone) leaves at the next step. A failure inside one request (its admission, its
sampling, its text) ends that request only, as a RequestFailed; only a failure of the shared
forward pass ends every running request.

Each row samples with its own torch.Generator (one uniform per token, see sampling.py), so a
seeded request gives the same text streamed or not, run after run. Bit-equality across
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
from ..inference.engine import Engine as Core
from ..inference.engine import Output
from ..sampling import NO_FINITE_LOGIT
from ..sampling_params import NAN_LOGITS_MESSAGE
from .rows import Choice, Job, Piece

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
    def __init__(self, model, tokenizer, *, max_batch: int = 64, max_concurrency: int = 8, max_queue: int = 32,
                 kv_blocks: int | None = None, max_step_tokens: int = 512, prefix_reuse: bool = True):
        """max_batch: rows in one step; kv_blocks: the paged pool's size (default: inference.engine.default_kv_blocks);
        max_step_tokens: the step's token budget (prompts are computed in chunks of what decoding rows leave)."""
        if max_batch < 1 or max_concurrency < 1 or max_queue < 0:
            raise GPT2KitError("max_batch and max_concurrency must be >= 1 and max_queue >= 0")
        self.core = Core(model, kv_blocks=kv_blocks, max_rows=max_batch, max_step_tokens=max_step_tokens,
                         prefix_reuse=prefix_reuse)
        self.model = self.core.model
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch, self.max_concurrency, self.max_queue = max_batch, max_concurrency, max_queue
        self.eot = tokenizer.eot_token
        self._cond = threading.Condition()
        self._waiting: deque[Generation] = deque()
        self._running: list[Generation] = []
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
        pool, sched = self.core.pool, self.core.scheduler
        with self._cond:
            return {
                "active": len(self._running) + len(self._waiting),
                "running": len(self._running),
                "queued": len(self._waiting),
                "rows": self.core.num_rows,
                "completed_total": self.completed_total,
                "cancelled_total": self.cancelled_total,
                "rejected_total": self.rejected_total,
                "kv_blocks": pool.num_blocks - 1,
                "kv_blocks_free": pool.num_free,
                "prefix_hit_blocks_total": pool.hits,
                "preempted_total": sched.preempted_total,
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
                while not self._closed and not self.core.has_work and not self._waiting:
                    self._cond.wait()
                if self._closed:
                    for g in [*self._running, *self._waiting]:
                        g._post(RuntimeError("the server is shutting down"))
                    return
                self._drop_cancelled_waiting()
                admitted = []
                while self._waiting and len(self._running) < self.max_concurrency:
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
            if self.core.has_work:
                try:
                    outputs = self.core.step()
                except Exception as e:  # the shared forward pass failed (a bug, OOM): fail what is running
                    for g in list(self._running):
                        self._fail(g, e)
                    continue
                self._deliver(outputs)

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
        for row in getattr(g, "rows", ()):
            if row.finish_reason is None:
                self.core.abort(row)
        with self._cond:
            if g in self._running:
                self._running.remove(g)
                if cancelled:
                    self.cancelled_total += 1
                else:
                    self.completed_total += 1
        if not cancelled:
            g._post(_DONE)

    def _admit(self, g: Generation) -> None:
        job = g.job
        g.rows = self.core.add_job(job, owner=g, stop_ids=() if self.eot is None else (self.eot,))
        g.choices = [Choice(g, row.index, row.tokens[: row.prompt_len], self.tokenizer) for row in g.rows]
        g.open = len(g.rows)  # choices not finished yet

    def _deliver(self, outputs: list[Output]) -> None:
        """Turn the step's outputs into Pieces, one post per request; finish and fail requests."""
        pieces: dict[Generation, list[Piece]] = {}
        failed: dict[Generation, Exception] = {}
        for out in outputs:
            g = out.row.owner
            if g in failed or g.cancelled:
                continue
            try:
                for piece in self._pieces(g.choices[out.row.index], out):
                    pieces.setdefault(g, []).append(piece)
            except Exception as e:  # e.g. the row's text could not be decoded: its request fails alone
                failed[g] = e
        for g, ps in pieces.items():
            if g not in failed:
                g._post(ps)
                g.open -= sum(1 for p in ps if p.finish_reason)
                if g.open == 0:
                    self._finish(g, cancelled=False)
        for g, e in failed.items():
            self._fail(g, e)

    def _pieces(self, choice: Choice, out: Output) -> list[Piece]:
        row, job = out.row, choice.job
        if out.error is not None:
            raise out.error
        if out.token == NO_FINITE_LOGIT:
            raise RequestFailed(NAN_LOGITS_MESSAGE)
        ps = []
        if out.prompt and job.echo:
            ps.append(choice.echo(row.prompt_lp if job.logprobs is not None else None))
        if out.token is not None:
            choice.gen.completion_tokens += 1
        if out.token is not None or out.finish_reason:
            finish = out.finish_reason
            p = choice.take(out.token, (out.logprob, out.top), self.eot, finish)
            if p is not None:
                if p.finish_reason and row.finish_reason is None:  # a stop string ended it: the engine lets go of the row
                    self.core.abort(row)
                    row.finish_reason = p.finish_reason
                ps.append(p)
        return ps
