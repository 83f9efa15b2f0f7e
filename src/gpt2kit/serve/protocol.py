"""The OpenAI completions wire format: request validation into a Job, and response/chunk bodies.

The bodies are declared as pydantic models (SamplingBody: what completions and chat share;
CompletionBody adds the prompt); every invalid request becomes an ApiError carrying OpenAI's
error body {"error": {"message", "type", "param", "code"}}; the message names the fix.
Unknown fields are ignored, as OpenAI-compatible servers do, and logged once per field name.
The chat endpoint's body and responses live in chat.py, /tokenize and /detokenize in tokens.py.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import GPT2KitError
from ..inference.request import MAX_LOGPROBS
from ..sampling_params import (MAX_ADDITIVE_PENALTY, MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_ENTRIES, MAX_PENALTY, MIN_PENALTY,
                               SEED_LIMIT, SamplingParams, check_repetition_penalty, check_temperature)
from ..streaming import MAX_STOP_STRINGS, StopStrings, check_stop_limits
from .rows import Job, Piece, TokenLogprob

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
log = logging.getLogger("gpt2kit.serve")
_warned_fields: set[str] = set()


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
    model_id: str  # the primary name, reported in responses
    tokenizer: object
    block_size: int
    vocab_size: int
    max_tokens_cap: int
    max_rows: int
    aliases: tuple[str, ...] = ()  # other names a request may give (the --model path, more --model-name values)
    chat_template: object = None  # chat_template.ChatTemplate; None = the plain default

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.model_id, *self.aliases)))


@dataclass
class CompletionRequest:
    job: Job
    stream: bool
    include_usage: bool


# -- the request bodies -----------------------------------------------------------------------

Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Bool = Annotated[bool, Field(strict=True)]


class StreamOptions(BaseModel):
    include_usage: Bool = False


class SamplingBody(BaseModel):
    """What /v1/completions and /v1/chat/completions share: OpenAI's sampling fields, plus top_k and repetition_penalty.

    Types and static ranges are declared here; limits that depend on the served model (context,
    vocabulary, max_tokens cap, rows) and the library's own sampling checks run in the parsers.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: Int | None = Field(None, ge=0)
    max_completion_tokens: Int | None = Field(None, ge=0, description="OpenAI's newer name for max_tokens")
    temperature: Num | None = Field(None, ge=0, le=2)
    top_p: Num | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=-1, description="0, -1 or null = no limit")
    repetition_penalty: Num | None = Field(None, description="CTRL's penalty on seen tokens; 1 = off")
    presence_penalty: Num | None = Field(None, ge=-MAX_ADDITIVE_PENALTY, le=MAX_ADDITIVE_PENALTY)
    frequency_penalty: Num | None = Field(None, ge=-MAX_ADDITIVE_PENALTY, le=MAX_ADDITIVE_PENALTY)
    logit_bias: dict[str, Num] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    n: Int | None = Field(None, ge=1)
    seed: Int | None = Field(None, ge=0, lt=SEED_LIMIT)
    stream: Bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None


class CompletionBody(SamplingBody):
    """A /v1/completions body: OpenAI's legacy completions fields."""

    prompt: str | list[str] | list[Int] | list[list[Int]] | None = None
    best_of: Int | None = None
    logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Bool | None = None
    suffix: str | None = None


def body_schema(model: type[BaseModel] = CompletionBody) -> dict:
    """A body's JSON schema with its definitions inlined, for the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(x):
        if isinstance(x, dict):
            ref = x.get("$ref", "")
            return inline(defs[ref.rsplit("/", 1)[1]]) if ref.startswith("#/$defs/") else {k: inline(v) for k, v in x.items()}
        return [inline(v) for v in x] if isinstance(x, list) else x

    return inline(schema)


def type_message(name: str, v, lim: ServerLimits) -> str:
    """The message for a field of the wrong type or out of its range."""
    pen = f"{name} must be a number in [-{MAX_ADDITIVE_PENALTY:g}, {MAX_ADDITIVE_PENALTY:g}] (0 = off), got {v!r}"
    return {
        "model": f"the model {v!r} does not exist; this server serves {', '.join(map(repr, lim.model_names))}",
        "prompt": "prompt must be a string, a list of strings, a list of token ids or a list of such lists (not a mix)",
        "max_tokens": f"max_tokens must be an integer in [0, {lim.max_tokens_cap}] (the server's cap), got {v!r}",
        "max_completion_tokens": f"max_completion_tokens must be an integer in [0, {lim.max_tokens_cap}] (the server's cap), got {v!r}",
        "n": f"n must be an integer in [1, {lim.max_rows}] (the server batches at most {lim.max_rows} rows), got {v!r}",
        "temperature": f"temperature must be a number in [0, 2], got {v!r}",
        "top_p": f"top_p must be a number in (0, 1], got {v!r}",
        "top_k": f"top_k must be a positive integer (0, -1 or null = no limit), got {v!r}",
        "repetition_penalty": f"repetition_penalty must be a number in [{MIN_PENALTY:g}, {MAX_PENALTY:g}] (1 = off), got {v!r}",
        "presence_penalty": pen,
        "frequency_penalty": pen,
        "logit_bias": f"logit_bias must map token ids (as strings) to numbers in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                      f'e.g. {{"50256": -100}}; got {v!r:.80}',
        "best_of": "best_of is not supported (only best_of == n)",
        "seed": f"seed must be an integer in [0, 2**64), got {v!r}",
        "logprobs": f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {v!r}",
        "top_logprobs": f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], got {v!r}",
        "echo": f"echo must be true or false, got {v!r}",
        "stream": f"stream must be true or false, got {v!r}",
        "stream_options": "stream_options must be an object like {\"include_usage\": true}",
        "stop": f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
        "suffix": "suffix is not supported by GPT-2 (it has no fill-in-the-middle training)",
        "messages": "messages must be a list of {\"role\": ..., \"content\": ...} objects",
        "tokens": f"tokens must be a list of token ids in [0, {lim.vocab_size - 1}]",
    }.get(name, f"{name} has the wrong type: {v!r:.80}")


def parse_body(body, model: type[BaseModel], lim: ServerLimits):
    """Validate a decoded JSON body against `model`; the first bad field becomes a 400 naming it (404 for model)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    _log_unknown(body, model)
    try:
        b = model.model_validate(body)
    except ValidationError as e:
        name = str(e.errors()[0]["loc"][0])
        if name == "model":
            raise ApiError(404, type_message(name, body.get(name), lim), name, code="model_not_found") from None
        raise bad(type_message(name, body.get(name), lim), name) from None
    if b.model is not None and b.model not in lim.model_names:
        raise ApiError(404, type_message("model", b.model, lim), "model", code="model_not_found")
    return b


def _log_unknown(body: dict, model: type[BaseModel]) -> None:
    """Ignored fields are logged, once per field name for the server's life (clients repeat them on every request)."""
    for name in body.keys() - model.model_fields.keys() - _warned_fields:
        if len(_warned_fields) < 1000:  # a client inventing names cannot grow the set without bound
            _warned_fields.add(name)
            log.warning("ignoring the unknown request field %r (logged once)", name[:100])


def encode_text(text: str, lim: ServerLimits, param: str) -> list[int]:
    try:
        return lim.tokenizer.encode(text, allowed_special="all")  # '<|endoftext|>' separates documents, as at OpenAI
    except GPT2KitError as e:
        raise bad(str(e), param) from None


def check_ids(ids: list[int], lim: ServerLimits, param: str) -> None:
    for t in ids:
        if not 0 <= t < lim.vocab_size:
            raise bad(f"{param} token {t!r} is not a token id in [0, {lim.vocab_size - 1}]", param)


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
            ids = encode_text(item, lim, "prompt")
        else:
            ids = item
            if not ids:
                raise bad("prompt holds an empty token list; give at least one token id", "prompt")
            check_ids(ids, lim, "prompt")
        out.append(list(ids))
    return out


def stop_strings(v, lim: ServerLimits, extra: tuple[str, ...] = ()) -> StopStrings:
    """The request's stop strings (at most MAX_STOP_STRINGS) plus `extra` (a chat template's), with their
    matching tables, built here (a worker thread), not in the engine."""
    stops = [] if v is None else [v] if isinstance(v, str) else v
    if not all(stops):
        raise bad(type_message("stop", v, lim), "stop")
    try:
        check_stop_limits(stops)
    except GPT2KitError as e:
        raise bad(str(e), "stop") from None
    return StopStrings([*stops, *(s for s in extra if s not in stops)])


def _logit_bias(v: dict | None, lim: ServerLimits) -> tuple[tuple[int, float], ...]:
    if not v:
        return ()
    if len(v) > MAX_LOGIT_BIAS_ENTRIES:
        raise bad(f"logit_bias has {len(v)} entries; at most {MAX_LOGIT_BIAS_ENTRIES} are allowed", "logit_bias")
    out = []
    for key, bias in v.items():
        if not key.isascii() or not key.isdigit() or int(key) >= lim.vocab_size:
            raise bad(f"logit_bias key {key!r:.40} is not a token id in [0, {lim.vocab_size - 1}]; keys are token ids as strings", "logit_bias")
        if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise bad(f"logit_bias[{key!r}] is {bias!r}; biases must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]", "logit_bias")
        out.append((int(key), float(bias)))
    return tuple(out)


def sampling_params(b: SamplingBody, lim: ServerLimits) -> SamplingParams:
    """The body's sampling settings, checked by the library's own rules (named for the field)."""
    temperature = 1.0 if b.temperature is None else b.temperature
    rp = 1.0 if b.repetition_penalty is None else b.repetition_penalty
    for name, check, v in [("temperature", check_temperature, temperature), ("repetition_penalty", check_repetition_penalty, rp)]:
        try:
            check(v)  # the library's own limits (numerically degenerate values), named for the field
        except GPT2KitError as e:
            raise bad(str(e), name) from None
    return SamplingParams(temperature, b.top_k if b.top_k and b.top_k > 0 else None, 1.0 if b.top_p is None else b.top_p, rp,
                          presence_penalty=b.presence_penalty or 0.0, frequency_penalty=b.frequency_penalty or 0.0,
                          logit_bias=_logit_bias(b.logit_bias, lim))


def max_tokens(b: SamplingBody, prompts: list[list[int]], lim: ServerLimits, default: int | None) -> int:
    """max_completion_tokens (or max_tokens), checked against the cap and the context: a request never
    asks for tokens past the context window. default None: the rest of the context (within the cap)."""
    name, asked = (("max_completion_tokens", b.max_completion_tokens) if b.max_completion_tokens is not None
                   else ("max_tokens", b.max_tokens))  # the newer name wins, as at vLLM
    longest = max(len(p) for p in prompts)
    room = lim.block_size - longest
    if room < 0 or (room == 0 and asked != 0):
        raise bad(f"the prompt has {longest} tokens but this model's context is {lim.block_size}; "
                  f"shorten it to at most {lim.block_size - 1} tokens so there is room to generate", _prompt_param(b))
    if asked is None:
        return min(room, lim.max_tokens_cap, lim.block_size if default is None else default)
    if asked > lim.max_tokens_cap:
        raise bad(type_message(name, asked, lim), name)
    if asked > room:
        raise bad(f"this model's context is {lim.block_size} tokens, but the prompt has {longest} and {name} asks for "
                  f"{asked} more ({longest + asked}); lower {name} to at most {room} or shorten the prompt", name)
    return asked


def _prompt_param(b: SamplingBody) -> str:
    return "messages" if hasattr(b, "messages") else "prompt"


def check_rows(b: SamplingBody, num_prompts: int, lim: ServerLimits) -> int:
    n = 1 if b.n is None else b.n
    if n > lim.max_rows:
        raise bad(type_message("n", n, lim), "n")
    if num_prompts * n > lim.max_rows:
        raise bad(f"{num_prompts} prompts x n={n} is {num_prompts * n} rows but the server batches at most {lim.max_rows}", "n")
    return n


def stream_flags(b: SamplingBody) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(b.stream)
    if b.stream_options is not None and not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    return stream, bool(b.stream_options and b.stream_options.include_usage)


def parse_completion(body, lim: ServerLimits) -> CompletionRequest:
    """Validate a /v1/completions body (already JSON-decoded); tokenizes, so run it off the event loop."""
    b = parse_body(body, CompletionBody, lim)
    if b.suffix:
        raise bad(type_message("suffix", b.suffix, lim), "suffix")
    n = 1 if b.n is None else b.n
    if b.best_of is not None and b.best_of != n:
        raise bad(type_message("best_of", b.best_of, lim), "best_of")
    params = sampling_params(b, lim)
    stream, include_usage = stream_flags(b)
    prompts = _prompts(b.prompt, lim)
    n = check_rows(b, len(prompts), lim)
    job = Job(prompts=prompts, max_tokens=max_tokens(b, prompts, lim, DEFAULT_MAX_TOKENS), params=params, n=n,
              seed=b.seed, stop=stop_strings(b.stop, lim), logprobs=b.logprobs, echo=bool(b.echo))
    return CompletionRequest(job, stream, include_usage)


# -- responses ---------------------------------------------------------------------------------

def new_id(prefix: str = "cmpl-") -> str:
    return prefix + uuid.uuid4().hex


def token_str(tokenizer, t: int) -> str:
    """A token's text; bytes that are not whole UTF-8 characters are written as OpenAI does, 'bytes:\\xNN'."""
    b = tokenizer.token_bytes(t)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def token_text(tokenizer, t: int) -> str:
    """A token's text with partial UTF-8 characters as U+FFFD (chat logprobs and vLLM's token_strs; the exact bytes go
    alongside where the format has room)."""
    return tokenizer.token_bytes(t).decode("utf-8", "replace")


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


@dataclass
class CompletionStream:
    """One /v1/completions response: its SSE chunks and its JSON body (chat.ChatStream is the chat one)."""

    cid: str
    created: int
    model: str
    tokenizer: object
    num_choices: int
    prefix = "cmpl-"  # of the response id

    def head(self) -> dict | None:
        return None  # completions streams start with text

    def chunk(self, pieces: list[Piece]) -> dict:
        return chunk_body(self.cid, self.created, self.model, self.tokenizer, pieces)

    def usage_chunk(self, usage_: dict) -> dict:
        return {"id": self.cid, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [], "usage": usage_}

    def body(self, collected: Collector, usage_: dict) -> dict:
        return collected.body(self.cid, self.model, self.tokenizer, usage_)
