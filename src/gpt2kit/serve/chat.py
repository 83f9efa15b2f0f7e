"""OpenAI's chat completions wire format: messages -> a Job through the model's chat template, and
the chat response, chunk and logprobs bodies.

The prompt is the template's rendering of the messages with the generation prompt; the template's
stop strings join the request's. A reply's leading whitespace is dropped (the plain default template
ends its prompt with "Assistant:", so replies start with a space, as GPT-2's words do); the logprobs
still list every generated token.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import Field

from ..chat_template import ChatTemplate, ChatTemplateError
from ..inference.request import MAX_LOGPROBS
from .protocol import (Bool, CompletionRequest, Int, SamplingBody, ServerLimits, bad, check_rows, encode_text,
                       max_tokens, parse_body, sampling_params, stop_strings, stream_flags, token_text)
from .rows import Job, Piece, TokenLogprob


class ChatBody(SamplingBody):
    """A /v1/chat/completions body: OpenAI's chat fields (max_tokens defaults to the rest of the context)."""

    messages: list | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)


def render_messages(messages, template: ChatTemplate, lim: ServerLimits, add_generation_prompt: bool = True) -> list[int]:
    """The template's prompt for messages, in token ids; bad messages are a 400 naming the message."""
    if messages is None:
        raise bad("messages is required: a list of {\"role\": ..., \"content\": ...} objects", "messages")
    try:
        text = template.render(messages, add_generation_prompt)
    except ChatTemplateError as e:
        raise bad(str(e), "messages") from None
    ids = encode_text(text, lim, "messages")
    if not ids:
        raise bad("the messages render to an empty prompt; give some text", "messages")
    return ids


def parse_chat(body, lim: ServerLimits) -> CompletionRequest:
    """Validate a /v1/chat/completions body (already JSON-decoded); renders and tokenizes, so run it off the event loop."""
    b = parse_body(body, ChatBody, lim)
    if b.top_logprobs and not b.logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    template = lim.chat_template or ChatTemplate()
    params = sampling_params(b, lim)
    stream, include_usage = stream_flags(b)
    ids = render_messages(b.messages, template, lim)
    n = check_rows(b, 1, lim)
    job = Job(prompts=[ids], max_tokens=max_tokens(b, [ids], lim, default=None), params=params, n=n, seed=b.seed,
              stop=stop_strings(b.stop, lim, template.stop), logprobs=(b.top_logprobs or 0) if b.logprobs else None)
    return CompletionRequest(job, stream, include_usage)


# -- responses ---------------------------------------------------------------------------------

def _entry(tokenizer, token: int, logprob: float) -> dict:
    return {"token": token_text(tokenizer, token), "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}


def chat_logprobs(tokenizer, toks: list[TokenLogprob]) -> dict:
    """OpenAI's chat logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}."""
    return {"content": [{**_entry(tokenizer, t.token, t.logprob),
                         "top_logprobs": [_entry(tokenizer, i, lp) for i, lp in (t.top or [])]} for t in toks]}


class ReplyText:
    """Drops each choice's leading whitespace, however the stream splits it."""

    def __init__(self, num_choices: int):
        self.started = [False] * num_choices

    def __call__(self, index: int, text: str) -> str:
        if not self.started[index]:
            text = text.lstrip()
            self.started[index] = bool(text)
        return text


@dataclass
class ChatStream:
    """One chat completion response: its SSE chunks and its JSON body."""

    cid: str
    created: int
    model: str
    tokenizer: object
    num_choices: int
    prefix = "chatcmpl-"  # of the response id

    def __post_init__(self) -> None:
        self.reply = ReplyText(self.num_choices)

    def _chunk(self, choices: list[dict]) -> dict:
        return {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices}

    def head(self) -> dict:
        """The first chunk: every choice's role."""
        return self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                            for i in range(self.num_choices)])

    def chunk(self, pieces: list[Piece]) -> dict | None:
        choices = []
        for p in pieces:
            text = self.reply(p.index, p.text)
            if text or p.tokens or p.finish_reason:
                choices.append({"index": p.index, "delta": {"content": text} if text else {},
                                "logprobs": None if p.tokens is None else chat_logprobs(self.tokenizer, p.tokens),
                                "finish_reason": p.finish_reason})
        return self._chunk(choices) if choices else None

    def usage_chunk(self, usage_: dict) -> dict:
        return {**self._chunk([]), "usage": usage_}

    def body(self, collected, usage_: dict) -> dict:
        """The non-streamed response from a protocol.Collector."""
        return {
            "id": self.cid, "object": "chat.completion", "created": int(time.time()), "model": self.model,
            "choices": [{
                "index": i, "message": {"role": "assistant", "content": "".join(t).lstrip()},
                "logprobs": None if collected.tokens[i] is None else chat_logprobs(self.tokenizer, collected.tokens[i]),
                "finish_reason": collected.finish[i],
            } for i, t in enumerate(collected.text)],
            "usage": usage_,
        }
