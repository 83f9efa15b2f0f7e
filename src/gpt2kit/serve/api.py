"""The FastAPI app: OpenAI-style /v1/completions (JSON or SSE), /v1/models, /health, and the page at /.

Request bodies are capped (2 MB) while they are read; validation and tokenization run in a
worker thread and generation in the engine thread, so the event loop only moves bytes.
guard.Guard stands in front of every route: the API key (all but /health), CORS and uploads.
The OpenAPI schema is at /openapi.json (behind the key like the rest).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GPT2KitError
from .engine import Busy, Cancelled, Engine, Generation, RequestFailed
from .guard import Guard
from .protocol import (ApiError, Collector, ServerLimits, bad, chunk_body, error_body, new_id, parse_completion,
                       usage)

MAX_BODY_BYTES = 2 * 1024 * 1024


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with a 400 once it passes `limit` bytes (checked while reading, not after)."""
    declared = request.headers.get("content-length")
    too_big = bad(f"the request body is over the {limit // (1024 * 1024)} MB limit; send a shorter prompt")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise too_big
    return bytes(buf)


def parse_json(raw: bytes):
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


def create_app(engine: Engine, *, model_id: str, api_key: str | None = None, max_tokens_cap: int = 1024,
               page: bool = True, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    tok, cfg = engine.tokenizer, engine.config
    limits = ServerLimits(model_id=model_id, tokenizer=tok, block_size=cfg.block_size, vocab_size=cfg.vocab_size,
                          max_tokens_cap=max_tokens_cap, max_rows=engine.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != model_id:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model_id!r}", "model", code="model_not_found")
        return model_card()

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "gpt2kit",
                "context_length": cfg.block_size, "max_tokens_cap": max_tokens_cap}

    @app.post("/v1/completions")
    async def completions(request: Request):
        raw = await read_body(request)
        # JSON decoding and tokenizing up to 2 MB take milliseconds: off the event loop
        req = await asyncio.to_thread(lambda: parse_completion(parse_json(raw), limits))
        try:
            gen = engine.submit(req.job)
        except Busy as e:
            raise ApiError(429, str(e), type="server_busy", code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        except GPT2KitError as e:
            raise bad(str(e)) from None
        cid, created = new_id(), int(time.time())
        if req.stream:
            return StreamingResponse(sse(gen, request, cid, created, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collected = Collector(req.job.num_rows, req.job.logprobs is not None)
        try:
            async for pieces in until_disconnect(gen, request):
                collected.add(pieces)
        except Cancelled:  # the client left: nobody reads this
            return JSONResponse(error_body("the client closed the request"), status_code=499)
        except RequestFailed as e:  # the engine failed this request (and only this one)
            return JSONResponse(failure_body(e), status_code=400 if e.client_error else 500)
        except RuntimeError as e:  # the server is shutting down
            return JSONResponse(error_body(str(e), "server_error"), status_code=500)
        return JSONResponse(collected.body(cid, model_id, tok, usage(gen.prompt_tokens, gen.completion_tokens)))

    async def sse(gen: Generation, request: Request, cid: str, created: int, include_usage: bool):
        def event(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            async for pieces in until_disconnect(gen, request):
                chunk = chunk_body(cid, created, model_id, tok, pieces)
                if include_usage:
                    chunk["usage"] = None
                yield event(chunk)
        except Cancelled:
            return
        except RequestFailed as e:
            yield event(failure_body(e))
            return
        except RuntimeError as e:
            yield event(error_body(str(e), "server_error"))
            return
        if include_usage:
            yield event({"id": cid, "object": "text_completion", "created": created, "model": model_id, "choices": [],
                         "usage": usage(gen.prompt_tokens, gen.completion_tokens)})
        yield "data: [DONE]\n\n"

    if page:
        from .page import mount_page

        app = mount_page(app, engine, limits)
    app.add_middleware(Guard, api_key=api_key, cors_origins=tuple(cors_origins))
    return app
