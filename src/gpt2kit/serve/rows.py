"""The text side of one choice: how its tokens become streamed text, stop strings and logprob offsets.

The inference engine decides tokens (ids only); a Choice turns them into the Pieces a response
carries: whole UTF-8 characters, text held back while it may still become a stop string, and
each token's character offset for logprobs.
"""
from __future__ import annotations

import codecs

from ..inference.request import Job, Piece, TokenLogprob  # noqa: F401  (re-exported)
from ..streaming import TextStreamer


class Choice:
    def __init__(self, gen, index: int, prompt: list[int], tokenizer):
        self.gen = gen  # the Generation this choice belongs to
        self.index = index  # choice index in the response
        self.job: Job = gen.job
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.streamer = TextStreamer(tokenizer, self.job.stop, prev=prompt[-1] if prompt else None)
        self.offsets = codecs.getincrementaldecoder("utf-8")(errors="replace")  # text_offset bookkeeping
        self.text_len = 0
        self.pending: list[TokenLogprob] = []  # tokens whose text is not yet emitted

    def advance_offset(self, token: int) -> int:
        start = self.text_len
        self.text_len += len(self.offsets.decode(self.tokenizer.token_bytes(token)))
        return start

    def echo(self, prompt_lp) -> Piece:
        """The prompt as this choice's first text; prompt_lp: (logprob, top) per prompt token (None when not asked)."""
        # prompt bytes go through the streamer's decoder, so a character split at the prompt's end is
        # completed by the first generated token, not mangled
        text = "".join(self.streamer.decoder.push(t) for t in self.prompt)
        toks = None
        if prompt_lp is not None:
            n = self.job.logprobs
            toks = [TokenLogprob(t, None if e is None else e[0], None if e is None else e[1][:n], self.advance_offset(t))
                    for t, e in zip(self.prompt, prompt_lp)]
        else:
            self.text_len = len(text)
        return Piece(self.index, text, toks)

    def take(self, t: int | None, lp, eot: int | None, finish: str | None) -> Piece | None:
        """Account for token t (None: no new token, only a finish); returns the Piece to emit, if any.
        finish: the engine's reason ("stop" at a stop id, "length"); a stop string also gives "stop"."""
        text = ""
        if t is not None and t != eot:
            if self.job.logprobs is not None:
                self.pending.append(TokenLogprob(t, lp[0], lp[1], self.advance_offset(t)))
            text = self.streamer.push(t)
            if self.streamer.stopped:
                finish = "stop"
        if finish and not self.streamer.stopped:
            text += self.streamer.flush()
        if not text and not finish:
            return None
        toks, self.pending = (self.pending, []) if self.job.logprobs is not None else (None, self.pending)
        return Piece(self.index, text, toks, finish)
