"""The OpenAI completions wire format: request validation into a Job, and response/chunk bodies.

The body is declared as a pydantic model (CompletionBody); every invalid request becomes an
ApiError carrying OpenAI's error body
{"error": {"message", "type", "param", "code"}}; the message names the fix.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import GPT2KitError
from ..sampling_params import (MAX_PENALTY, MIN_PENALTY, SEED_LIMIT, SamplingParams, check_repetition_penalty,
                               check_temperature)
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


# -- the request body -------------------------------------------------------------------------

Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Bool = Annotated[bool, Field(strict=True)]


class StreamOptions(BaseModel):
    include_usage: Bool = False


class CompletionBody(BaseModel):
    """A /v1/completions body: OpenAI's legacy completions fields, plus top_k and repetition_penalty.

    Types and static ranges are declared here; limits that depend on the served model (context,
    vocabulary, max_tokens cap, rows) and the library's own sampling checks run in parse_completion.
    Unknown fields are ignored, as OpenAI clients send some (user, ...) that change nothing here.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[str] | list[Int] | list[list[Int]] | None = None
    max_tokens: Int | None = Field(None, ge=1)
    temperature: Num | None = Field(None, ge=0, le=2)
    top_p: Num | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=-1, description="0, -1 or null = no limit")
    repetition_penalty: Num | None = Field(None, description="CTRL's penalty on seen tokens; 1 = off")
    n: Int | None = Field(None, ge=1)
    best_of: Int | None = None
    seed: Int | None = Field(None, ge=0, lt=SEED_LIMIT)
    logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Bool | None = None
    stream: Bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    suffix: str | None = None
    presence_penalty: Num | None = None
    frequency_penalty: Num | None = None
    logit_bias: dict | None = None


def body_schema() -> dict:
    """CompletionBody's JSON schema with its definitions inlined, for the OpenAPI document."""
    schema = CompletionBody.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(x):
        if isinstance(x, dict):
            ref = x.get("$ref", "")
            return inline(defs[ref.rsplit("/", 1)[1]]) if ref.startswith("#/$defs/") else {k: inline(v) for k, v in x.items()}
        return [inline(v) for v in x] if isinstance(x, list) else x

    return inline(schema)


def _type_message(name: str, v, lim: ServerLimits) -> str:
    """The message for a field of the wrong type or out of its range (the same words as before pydantic)."""
    unsupported = f"{name} is not supported; use repetition_penalty (> 0, 1 = off) instead"
    return {
        "model": f"the model {v!r} does not exist; this server serves {lim.model_id!r}",
        "prompt": "prompt must be a string, a list of strings, a list of token ids or a list of such lists (not a mix)",
        "max_tokens": f"max_tokens must be an integer in [1, {lim.max_tokens_cap}] (the server's cap), got {v!r}",
        "n": f"n must be an integer in [1, {lim.max_rows}] (the server batches at most {lim.max_rows} rows), got {v!r}",
        "temperature": f"temperature must be a number in [0, 2], got {v!r}",
        "top_p": f"top_p must be a number in (0, 1], got {v!r}",
        "top_k": f"top_k must be a positive integer (0, -1 or null = no limit), got {v!r}",
        "repetition_penalty": f"repetition_penalty must be a number in [{MIN_PENALTY:g}, {MAX_PENALTY:g}] (1 = off), got {v!r}",
        "best_of": "best_of is not supported (only best_of == n)",
        "seed": f"seed must be an integer in [0, 2**64), got {v!r}",
        "logprobs": f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {v!r}",
        "echo": f"echo must be true or false, got {v!r}",
        "stream": f"stream must be true or false, got {v!r}",
        "stream_options": "stream_options must be an object like {\"include_usage\": true}",
        "stop": f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
        "suffix": "suffix is not supported by GPT-2 (it has no fill-in-the-middle training)",
        "presence_penalty": unsupported,
        "frequency_penalty": unsupported,
        "logit_bias": "logit_bias is not supported",
    }[name]


def _parse_body(body, lim: ServerLimits) -> CompletionBody:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    try:
        return CompletionBody.model_validate(body)
    except ValidationError as e:
        name = str(e.errors()[0]["loc"][0])
        if name == "model":
            raise ApiError(404, _type_message(name, body.get(name), lim), name, code="model_not_found") from None
        raise bad(_type_message(name, body.get(name), lim), name) from None


def _prompts(prompt, lim: ServerLimits) -> list[list[int]]:
    """A string, a list of strings, a list of ids or a list of id lists (types already checked) -> id lists."""
    if prompt is None:
        raise bad("prompt is required: a string, a list of strings, a list of token ids or a list of such lists", "prompt")
    if not prompt and isinstance(prompt, list):
        raise bad("prompt is empty; give some text or token ids", "prompt")
    items = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
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
                if not 0 <= t < lim.vocab_size:
                    raise bad(f"prompt token {t!r} is not a token id in [0, {lim.vocab_size - 1}]", "prompt")
        if len(ids) >= lim.block_size:
            raise bad(f"the prompt has {len(ids)} tokens but this model's context is {lim.block_size}; "
                      f"shorten it to at most {lim.block_size - 1} tokens so there is room to generate", "prompt")
        out.append(list(ids))
    return out


def _stop(v, lim: ServerLimits) -> StopStrings:
    """The stop strings with their matching tables, built here (a worker thread), not in the engine."""
    stops = [] if v is None else [v] if isinstance(v, str) else v
    if not all(stops):
        raise bad(_type_message("stop", v, lim), "stop")
    try:
        check_stop_limits(stops)
    except GPT2KitError as e:
        raise bad(str(e), "stop") from None
    return StopStrings(stops)


def parse_completion(body, lim: ServerLimits) -> CompletionRequest:
    """Validate a /v1/completions body (already JSON-decoded); tokenizes, so run it off the event loop."""
    b = _parse_body(body, lim)
    if b.model is not None and b.model != lim.model_id:
        raise ApiError(404, _type_message("model", b.model, lim), "model", code="model_not_found")
    if b.suffix:
        raise bad(_type_message("suffix", b.suffix, lim), "suffix")
    for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
        if getattr(b, name):  # 0 and {} are OpenAI's defaults: accepted
            raise bad(_type_message(name, getattr(b, name), lim), name)
    n = 1 if b.n is None else b.n
    max_tokens = DEFAULT_MAX_TOKENS if b.max_tokens is None else b.max_tokens
    for name, v, hi in (("n", n, lim.max_rows), ("max_tokens", max_tokens, lim.max_tokens_cap)):
        if v > hi:
            raise bad(_type_message(name, v, lim), name)
    if b.best_of is not None and b.best_of != n:
        raise bad(_type_message("best_of", b.best_of, lim), "best_of")
    temperature = 1.0 if b.temperature is None else b.temperature
    top_p = 1.0 if b.top_p is None else b.top_p
    rp = 1.0 if b.repetition_penalty is None else b.repetition_penalty
    for name, check, v in [("temperature", check_temperature, temperature), ("repetition_penalty", check_repetition_penalty, rp)]:
        try:
            check(v)  # the library's own limits (numerically degenerate values), named for the field
        except GPT2KitError as e:
            raise bad(str(e), name) from None
    stream = bool(b.stream)
    if b.stream_options is not None and not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    prompts = _prompts(b.prompt, lim)
    if len(prompts) * n > lim.max_rows:
        raise bad(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} rows but the server batches at most {lim.max_rows}", "n")
    params = SamplingParams(temperature, b.top_k if b.top_k and b.top_k > 0 else None, top_p, rp)
    job = Job(prompts=prompts, max_tokens=max_tokens, params=params, n=n, seed=b.seed, stop=_stop(b.stop, lim),
              logprobs=b.logprobs, echo=bool(b.echo))
    return CompletionRequest(job, stream, bool(b.stream_options and b.stream_options.include_usage))


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
