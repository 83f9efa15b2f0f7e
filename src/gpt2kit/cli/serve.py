"""`gpt2kit serve`: the OpenAI-compatible completions API and the demo page, on one uvicorn server."""
from __future__ import annotations

import os

from . import types as T
from .common import add_model_args, load_model_args


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model: OpenAI-style /v1/chat/completions and /v1/completions plus a web page at /",
                       description="Serve a model over HTTP: POST /v1/chat/completions and /v1/completions (OpenAI wire format, "
                                   "SSE streaming), GET /v1/models, POST /tokenize and /detokenize (vLLM's), GET /health, "
                                   "and a gradio page at /. Needs `pip install \"gpt2kit[serve]\"`.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=T.port, default=8000, help="port (default: 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("GPT2KIT_API_KEY"),
                   help="require this key on every route but /health: `Authorization: Bearer KEY`, or a sign-in at /login for the page (default: $GPT2KIT_API_KEY; unset = open)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://app.example) call the API; repeatable (default: none, cross-origin requests are refused)")
    p.add_argument("--model-name", action="append", default=[], metavar="NAME",
                   help="a model id clients may send; repeatable, the first is the id the server reports "
                        "(default: the directory's name, or the --model value); the --model value itself is always accepted")
    p.add_argument("--max-concurrency", type=T.positive_int, default=8, help="requests generating at once (default: 8)")
    p.add_argument("--max-queue", type=T.nonneg_int, default=32, help="requests waiting beyond those; more get HTTP 429 (default: 32)")
    p.add_argument("--max-batch", type=T.positive_int, default=64, help="rows (prompts x n) run in one forward pass (default: 64)")
    p.add_argument("--kv-cache-gb", type=T.positive_float, default=None,
                   help="memory for the paged KV cache; requests wait when it is full (default: room for --max-batch full "
                        "contexts, at most a quarter of this machine's memory; only the blocks in use are resident)")
    p.add_argument("--max-step-tokens", type=T.positive_int, default=512,
                   help="tokens one engine step computes: decoding rows first, then prompt chunks, so a long prompt "
                        "never stalls streaming rows for longer than one such step (default: 512)")
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="compute every prompt in full, even where cached KV blocks hold its prefix (for comparisons)")
    p.add_argument("--max-tokens-cap", type=T.positive_int, default=None, help="largest max_tokens a request may ask (default: the model's context)")
    p.add_argument("--threads", type=T.positive_int, default=None,
                   help="torch CPU threads per op (default: torch's choice; 1 suits small models on busy machines)")
    p.add_argument("--read-timeout", type=T.positive_float, default=10.0,
                   help="seconds a client has to send a request's headers (else the connection is closed) and its body (else 408) (default: 10)")
    p.add_argument("--max-connections", type=T.positive_int, default=256,
                   help="open connections at once; more are closed on arrival (default: 256)")
    p.add_argument("--no-page", action="store_true", help="serve the API only, without the gradio page")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from gpt2kit.extras import require

    for module in ("fastapi", "uvicorn") + (() if args.no_page else ("gradio",)):
        require(module, "gpt2kit serve")
    import uvicorn

    from gpt2kit.serve import build_app

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tok = load_model_args(args)
    names = args.model_name or [os.path.basename(os.path.normpath(args.model)) if os.path.isdir(args.model) else args.model]
    name, aliases = names[0], (*names[1:], args.model)
    cap = args.max_tokens_cap or model.config.block_size
    app = build_app(model, tok, model_id=name, aliases=aliases, api_key=args.api_key, max_concurrency=args.max_concurrency,
                    max_queue=args.max_queue, max_batch=args.max_batch, max_tokens_cap=cap, page=not args.no_page,
                    cors_origins=tuple(args.cors_origin), read_timeout=args.read_timeout, kv_blocks=_kv_blocks(args, model),
                    max_step_tokens=args.max_step_tokens, prefix_reuse=not args.no_prefix_reuse)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"gpt2kit serve: {name} on http://{shown}:{port}/  (API: /v1/completions{', key required' if args.api_key else ''})", flush=True)
    from gpt2kit.serve.transport import guarded_protocol

    http = guarded_protocol(args.read_timeout, args.max_connections)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=http))
    server.run(sockets=[sock])
    return 0


def _kv_blocks(args, model) -> int | None:
    """--kv-cache-gb as a number of KV blocks (None: the engine's default)."""
    if args.kv_cache_gb is None:
        return None
    from gpt2kit.inference.kv import BlockPool

    from gpt2kit.errors import GPT2KitError
    from gpt2kit.inference.kv import BLOCK_LEN

    per_block = BlockPool.bytes_per_block(model.config, model.transformer.wte.weight.dtype)
    blocks = int(args.kv_cache_gb * 2**30) // per_block
    need = -(-model.config.block_size // BLOCK_LEN)
    if blocks < need:
        raise GPT2KitError(f"--kv-cache-gb {args.kv_cache_gb:g} holds {blocks * BLOCK_LEN} tokens, less than one context of "
                           f"{model.config.block_size}; give at least {need * per_block / 2**30:.3f}")
    return 1 + blocks


def _bind(host: str, port: int):
    """A listening socket bound before uvicorn starts, so --port 0 can report the port it got."""
    import socket

    from gpt2kit.errors import GPT2KitError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GPT2KitError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
