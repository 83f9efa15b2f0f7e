"""The FastAPI app: OpenAI-style /v1/chat/completions and /v1/completions (JSON or SSE), /v1/models,
vLLM's /tokenize and /detokenize, /health, and the page at /.

Request bodies are capped (2 MB) while they are read; validation and tokenization run in a
worker thread and generation in the engine thread, so the event loop only moves bytes.
guard.Guard stands in front of every route: the API key (all but /health), CORS and uploads.
The OpenAPI schema is at /openapi.json (behind the key like the rest).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GPT2KitError
from .engine import Busy, Cancelled, Engine, Generation, RequestFailed
from .guard import Guard
from .chat import ChatBody, ChatStream, parse_chat
from .protocol import (ApiError, Collector, CompletionBody, CompletionStream, ServerLimits, bad, body_schema, error_body,
                       new_id, parse_completion, type_message, usage)
from .tokens import DetokenizeBody, TokenizeBody, detokenize, tokenize

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 32  # nesting of arrays/objects; the deepest valid body nests 3 (a list of id lists)
ENDPOINTS = ("POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{model}, "
             "POST /tokenize, POST /detokenize, GET /health")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


async def read_body(request: Request, timeout: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with a 400 once it passes `limit` bytes (checked while reading, not after)
    and with a 408 when it takes over `timeout` seconds to arrive."""
    declared = request.headers.get("content-length")
    too_big = bad(f"the request body is over the {limit // (1024 * 1024)} MB limit; send a shorter prompt")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big

    async def read() -> bytes:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise too_big
        return bytes(buf)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None


def json_depth(raw: bytes) -> int:
    """The deepest nesting of [ and { outside strings, in one vectorised pass (json.loads would recurse)."""
    import numpy as np

    a = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.isin(a, (ord("["), ord("{"))).astype(np.int32) - np.isin(a, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def parse_json(raw: bytes):
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise bad(f"the request body nests arrays or objects over {MAX_JSON_DEPTH} deep")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None


async def until_disconnect(gen: Generation, request: Request):
    """Yield the generation's piece lists; a client that goes away cancels it at once."""

    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gen.cancel()

    watcher = asyncio.create_task(watch())
    try:
        async for pieces in gen:
            yield pieces
    finally:
        watcher.cancel()
        gen.cancel()  # no-op when it finished; stops it when the response was abandoned


def failure_body(e: RequestFailed) -> dict:
    return error_body(str(e), "invalid_request_error" if e.client_error else "server_error")


def create_app(engine: Engine, *, model_id: str, aliases: tuple[str, ...] = (), chat_template=None,
               api_key: str | None = None, max_tokens_cap: int = 1024, page: bool = True,
               cors_origins: tuple[str, ...] = (), read_timeout: float = 10.0) -> FastAPI:
    """aliases: more names requests may give for the model; chat_template: a chat_template.ChatTemplate (None = the
    plain default); read_timeout: seconds a request body may take to arrive (a client trickling bytes cannot hold a request)."""
    cfg = engine.config
    limits = ServerLimits(model_id=model_id, tokenizer=engine.tokenizer, block_size=cfg.block_size,
                          vocab_size=cfg.vocab_size, max_tokens_cap=max_tokens_cap, max_rows=engine.max_batch,
                          aliases=tuple(aliases), chat_template=chat_template)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.engine = engine
    add_error_handlers(app, page)
    add_info_routes(app, engine, limits)
    add_generation_routes(app, engine, limits, read_timeout)
    add_token_routes(app, limits, read_timeout)
    add_fallback_routes(app, page)
    if page:
        from .page import mount_page

        app = mount_page(app, engine, limits)
    app.add_middleware(Guard, api_key=api_key, cors_origins=tuple(cors_origins))
    return app


def unknown_route(request: Request, page: bool) -> JSONResponse:
    return JSONResponse(error_body(f"no route {request.method} {request.url.path}; this server answers {ENDPOINTS}"
                                   + (" and the page at /" if page else ""), code="unknown_url"), status_code=404)


def add_error_handlers(app: FastAPI, page: bool) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        if e.status_code == 404:
            return unknown_route(request, page)
        code = "method_not_allowed" if e.status_code == 405 else None
        return JSONResponse(error_body(str(e.detail), code=code), status_code=e.status_code, headers=getattr(e, "headers", None))


def add_info_routes(app: FastAPI, engine: Engine, limits: ServerLimits) -> None:
    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "gpt2kit", "root": limits.model_id,
                "context_length": limits.block_size, "max_model_len": limits.block_size,
                "max_tokens_cap": limits.max_tokens_cap}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": limits.model_id, **engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(name) for name in limits.model_names]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name not in limits.model_names:
            raise ApiError(404, type_message("model", name, limits), "model", code="model_not_found")
        return model_card(name)


def body_doc(model) -> dict:
    """The OpenAPI requestBody for a route that reads its body by hand (size cap, nesting check, off-loop parsing)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema(model)}}}}


async def parsed(request: Request, read_timeout: float, parse, limits: ServerLimits):
    """The body read (capped), decoded and validated by parse(body, limits); decoding and tokenizing up to 2 MB
    take milliseconds, so they run off the event loop."""
    raw = await read_body(request, read_timeout)
    return await asyncio.to_thread(lambda: parse(parse_json(raw), limits))


def start(engine: Engine, job) -> Generation:
    try:
        return engine.submit(job)
    except Busy as e:
        raise ApiError(429, str(e), type="server_busy", code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
    except GPT2KitError as e:
        raise bad(str(e)) from None


async def collect(gen: Generation, request: Request, collected: Collector) -> JSONResponse | None:
    """Read the whole generation into `collected`; the error response when it did not finish."""
    try:
        async for pieces in until_disconnect(gen, request):
            collected.add(pieces)
    except Cancelled:  # the client left: nobody reads this
        return JSONResponse(error_body("the client closed the request"), status_code=499)
    except RequestFailed as e:  # the engine failed this request (and only this one)
        return JSONResponse(failure_body(e), status_code=400 if e.client_error else 500)
    except RuntimeError as e:  # the server is shutting down
        return JSONResponse(error_body(str(e), "server_error"), status_code=500)
    return None


def event(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def sse(gen: Generation, request: Request, chunk, head: dict | None = None, usage_chunk=None):
    """Server-sent events: head, chunk(pieces) for each piece list (None: nothing to send), the usage chunk
    when asked for (then every chunk carries "usage": null, as OpenAI's do), and [DONE]."""
    if head is not None:
        yield event({**head, "usage": None} if usage_chunk else head)
    try:
        async for pieces in until_disconnect(gen, request):
            body = chunk(pieces)
            if body is not None:
                yield event({**body, "usage": None} if usage_chunk else body)
    except Cancelled:
        return
    except RequestFailed as e:
        yield event(failure_body(e))
        return
    except RuntimeError as e:
        yield event(error_body(str(e), "server_error"))
        return
    if usage_chunk:
        yield event(usage_chunk())
    yield "data: [DONE]\n\n"


def event_stream(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def gen_usage(gen: Generation) -> dict:
    return usage(gen.prompt_tokens, gen.completion_tokens)


def add_generation_routes(app: FastAPI, engine: Engine, limits: ServerLimits, read_timeout: float) -> None:
    routes = [("/v1/completions", CompletionBody, parse_completion, CompletionStream),
              ("/v1/chat/completions", ChatBody, parse_chat, ChatStream)]
    for path, body_model, parse, response in routes:
        add_generation_route(app, engine, limits, read_timeout, path, body_model, parse, response)


def add_generation_route(app: FastAPI, engine: Engine, limits: ServerLimits, read_timeout: float,
                         path: str, body_model, parse, response) -> None:
    """A route that validates with parse(body, limits) into a CompletionRequest and answers through `response`
    (protocol.CompletionStream or chat.ChatStream): SSE chunks, or one JSON body built from the same stream."""

    async def generation_route(request: Request):
        req = await parsed(request, read_timeout, parse, limits)
        gen = start(engine, req.job)
        out = response(new_id(response.prefix), int(time.time()), limits.model_id, engine.tokenizer, req.job.num_rows)
        if req.stream:
            usage_chunk = (lambda: out.usage_chunk(gen_usage(gen))) if req.include_usage else None
            return event_stream(sse(gen, request, out.chunk, head=out.head(), usage_chunk=usage_chunk))
        collected = Collector(req.job.num_rows, req.job.logprobs is not None)
        failed = await collect(gen, request, collected)
        return failed or JSONResponse(out.body(collected, gen_usage(gen)))

    app.post(path, name=path.strip("/").replace("/", "_"), openapi_extra=body_doc(body_model))(generation_route)


def add_token_routes(app: FastAPI, limits: ServerLimits, read_timeout: float) -> None:
    @app.post("/tokenize", openapi_extra=body_doc(TokenizeBody))
    async def tokenize_route(request: Request):
        return await parsed(request, read_timeout, tokenize, limits)

    @app.post("/detokenize", openapi_extra=body_doc(DetokenizeBody))
    async def detokenize_route(request: Request):
        return await parsed(request, read_timeout, detokenize, limits)


V1_METHODS = {"completions": "POST", "chat/completions": "POST", "models": "GET"}


def add_fallback_routes(app: FastAPI, page: bool) -> None:
    # Registered after the real routes and before the page's mount at "/", so /v1/* never reaches gradio:
    # a known path with the wrong method is a 405, anything else a 404, both in OpenAI's shape.
    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                   include_in_schema=False)
    async def other_v1(request: Request, rest: str):
        allow = V1_METHODS.get(rest) or ("GET" if rest.startswith("models/") else None)
        if allow:
            return JSONResponse(error_body(f"{request.method} is not allowed on /v1/{rest}; use {allow}",
                                           code="method_not_allowed"), status_code=405, headers={"Allow": allow})
        return unknown_route(request, page)
