"""Serving: a batching engine, an OpenAI-compatible API (chat and completions) and a gradio page, in one uvicorn server.

    from gpt2kit.serve import build_app
    app = build_app(model, tokenizer, model_id="gpt2")   # then run it with uvicorn

Needs the `serve` extra: pip install "gpt2kit[serve]".
"""
from __future__ import annotations

from .engine import Busy, Engine, Generation
from .rows import Job, Piece


def build_app(model, tokenizer, *, model_id: str, aliases: tuple[str, ...] = (), api_key: str | None = None,
              max_concurrency: int = 8, max_queue: int = 32, max_batch: int = 64, max_tokens_cap: int = 1024,
              page: bool = True, cors_origins: tuple[str, ...] = (), read_timeout: float = 10.0,
              kv_blocks: int | None = None, max_step_tokens: int = 512, prefix_reuse: bool = True):
    """An engine (its thread starts now) and the FastAPI app around it; the app's shutdown stops the engine.

    aliases: more model names requests may give. Chat uses the tokenizer's stored chat template, else the plain default.
    kv_blocks, max_step_tokens, prefix_reuse: the inference engine's KV pool, step budget and prefix cache."""
    from ..chat_template import template_for
    from .api import create_app

    template = template_for(tokenizer)  # a broken stored template fails here, before the engine starts
    engine = Engine(model, tokenizer, max_batch=max_batch, max_concurrency=max_concurrency, max_queue=max_queue,
                    kv_blocks=kv_blocks, max_step_tokens=max_step_tokens, prefix_reuse=prefix_reuse)
    return create_app(engine, model_id=model_id, aliases=aliases, chat_template=template, api_key=api_key,
                      max_tokens_cap=max_tokens_cap, page=page, cors_origins=cors_origins, read_timeout=read_timeout)


__all__ = ["build_app", "Engine", "Generation", "Busy", "Job", "Piece"]
