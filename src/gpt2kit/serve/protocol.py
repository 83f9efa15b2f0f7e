"""The OpenAI completions wire format: request validation into a Job, and response/chunk bodies.

Every invalid request becomes an ApiError carrying OpenAI's error body
{"error": {"message", "type", "param", "code"}}; the message names the fix.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from ..errors import GPT2KitError
from ..sampling_params import (SamplingParams, check_repetition_penalty, check_seed, check_temperature,
                               check_top_p)
from ..streaming import MAX_STOP_STRINGS, StopStrings, check_stop_limits
from .rows import Job, Piece, TokenLogprob

MAX_LOGPROBS = 5  # OpenAI's limit for the legacy completions endpoint
DEFAULT_MAX_TOKENS = 16  # OpenAI's default


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


@dataclass
class ServerLimits:
    model_id: str
    tokenizer: object
    block_size: int
    vocab_size: int
    max_tokens_cap: int
    max_rows: int


@dataclass
class CompletionRequest:
    job: Job
    stream: bool
    include_usage: bool


# -- field checks ------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"{name} must be true or false, got {v!r}", name)
    return v


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v) or math.isnan(v) or (v <= lo if lo_open else v < lo) or v > hi:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad(f"{name} must be a number in {rng}, got {v!r}", name)
    return float(v)


def _int(body: dict, name: str, default, lo: int, hi: int, why_hi: str = ""):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < lo or v > hi:
        raise bad(f"{name} must be an integer in [{lo}, {hi}]{why_hi}, got {v!r}", name)
    return v


def _prompts(prompt, lim: ServerLimits) -> list[list[int]]:
    """A string, a list of strings, a list of ids or a list of id lists -> id lists, each checked."""
    if prompt is None:
        raise bad("prompt is required: a string, a list of strings, a list of token ids or a list of such lists", "prompt")
    if isinstance(prompt, str):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and (all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt)):
        items = prompt
    elif isinstance(prompt, list) and not prompt:
        raise bad("prompt is empty; give some text or token ids", "prompt")
    else:
        raise bad("prompt must be a string, a list of strings, a list of token ids or a list of such lists (not a mix)", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise bad("prompt is empty; give some text", "prompt")
            try:
                ids = lim.tokenizer.encode(item, allowed_special="all")  # '<|endoftext|>' separates documents, as at OpenAI
            except GPT2KitError as e:
                raise bad(str(e), "prompt") from None
        else:
            ids = item
            if not ids:
                raise bad("prompt holds an empty token list; give at least one token id", "prompt")
            for t in ids:
                if not _is_int(t) or not 0 <= t < lim.vocab_size:
                    raise bad(f"prompt token {t!r} is not a token id in [0, {lim.vocab_size - 1}]", "prompt")
        if len(ids) >= lim.block_size:
            raise bad(f"the prompt has {len(ids)} tokens but this model's context is {lim.block_size}; "
                      f"shorten it to at most {lim.block_size - 1} tokens so there is room to generate", "prompt")
        out.append(list(ids))
    return out


def _stop(v) -> StopStrings:
    """The stop strings with their matching tables, built here (a worker thread), not in the engine."""
    if v is None:
        return StopStrings()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop")
    try:
        check_stop_limits(stops)
    except GPT2KitError as e:
        raise bad(str(e), "stop") from None
    return StopStrings(stops)


def parse_completion(body, lim: ServerLimits) -> CompletionRequest:
    """Validate a /v1/completions body (already JSON-decoded); tokenizes, so run it off the event loop."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != lim.model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {lim.model_id!r}", "model", code="model_not_found")
    if body.get("suffix") not in (None, ""):
        raise bad("suffix is not supported by GPT-2 (it has no fill-in-the-middle training)", "suffix")
    for name in ("presence_penalty", "frequency_penalty"):
        v = body.get(name)
        if v is not None and (not _is_num(v) or v != 0):
            raise bad(f"{name} is not supported; use repetition_penalty (> 0, 1 = off) instead", name)
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias is not supported", "logit_bias")

    n = _int(body, "n", 1, 1, lim.max_rows, f" (the server batches at most {lim.max_rows} rows)")
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise bad("best_of is not supported (only best_of == n)", "best_of")
    max_tokens = _int(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, lim.max_tokens_cap, " (the server's cap)")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < -1):
        raise bad(f"top_k must be a positive integer (0, -1 or null = no limit), got {top_k!r}", "top_k")
    rp = body.get("repetition_penalty")
    rp = 1.0 if rp is None else rp
    seed = body.get("seed")
    for name, check, v in [("temperature", check_temperature, temperature), ("top_p", check_top_p, top_p),
                           ("repetition_penalty", check_repetition_penalty, rp), ("seed", check_seed, seed)]:
        try:
            check(v)  # the library's own limits (numerically degenerate values), named for the field
        except GPT2KitError as e:
            raise bad(str(e), name) from None
    logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool)):
        raise bad("stream_options must be an object like {\"include_usage\": true}", "stream_options")
    if opts is not None and not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    prompts = _prompts(body.get("prompt"), lim)
    if len(prompts) * n > lim.max_rows:
        raise bad(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} rows but the server batches at most {lim.max_rows}", "n")
    params = SamplingParams(temperature, top_k if top_k and top_k > 0 else None, top_p, float(rp))
    job = Job(prompts=prompts, max_tokens=max_tokens, params=params, n=n, seed=seed, stop=_stop(body.get("stop")),
              logprobs=logprobs, echo=_bool(body, "echo", False))
    return CompletionRequest(job, stream, bool(opts and opts.get("include_usage")))


# -- responses ---------------------------------------------------------------------------------

def new_id() -> str:
    return "cmpl-" + uuid.uuid4().hex


def token_str(tokenizer, t: int) -> str:
    """A token's text; bytes that are not whole UTF-8 characters are written as OpenAI does, 'bytes:\\xNN'."""
    b = tokenizer.token_bytes(t)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def logprobs_body(tokenizer, toks: list[TokenLogprob]) -> dict:
    return {
        "tokens": [token_str(tokenizer, t.token) for t in toks],
        "token_logprobs": [t.logprob for t in toks],
        "top_logprobs": [None if t.top is None else {token_str(tokenizer, i): lp for i, lp in t.top} for t in toks],
        "text_offset": [t.offset for t in toks],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chunk_body(cid: str, created: int, model: str, tokenizer, pieces: list[Piece]) -> dict:
    return {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "choices": [{
            "index": p.index, "text": p.text, "finish_reason": p.finish_reason,
            "logprobs": None if p.tokens is None else logprobs_body(tokenizer, p.tokens),
        } for p in pieces],
    }


class Collector:
    """Joins streamed Pieces into the final choices (the non-streamed response is built from the same stream)."""

    def __init__(self, num_choices: int, with_logprobs: bool):
        self.text = [[] for _ in range(num_choices)]
        self.tokens: list[list[TokenLogprob] | None] = [[] if with_logprobs else None for _ in range(num_choices)]
        self.finish: list[str | None] = [None] * num_choices

    def add(self, pieces: list[Piece]) -> None:
        for p in pieces:
            self.text[p.index].append(p.text)
            if p.tokens is not None:
                self.tokens[p.index].extend(p.tokens)
            if p.finish_reason:
                self.finish[p.index] = p.finish_reason

    def body(self, cid: str, model: str, tokenizer, usage_: dict) -> dict:
        return {
            "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{
                "index": i, "text": "".join(t), "finish_reason": self.finish[i],
                "logprobs": None if self.tokens[i] is None else logprobs_body(tokenizer, self.tokens[i]),
            } for i, t in enumerate(self.text)],
            "usage": usage_,
        }
