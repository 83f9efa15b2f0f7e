"""Load test of `gpt2kit serve`: 64 concurrent streaming clients, each asking for 32 tokens.

The same tiny random-weight checkpoint is served twice, each time by a real `gpt2kit serve`
process on a loopback port: batched (up to 64 requests decoded in one forward pass) and one
at a time (--max-concurrency 1 --max-batch 1; the other requests wait in the queue). Clients
are asyncio + httpx in this process, reading the SSE stream to `data: [DONE]`. A request fails
if its status is not 200, the stream does not end with [DONE], or it yields != 32 tokens.

Prints one table: failures, throughput (generated tokens / wall time) and per-request latency
(p50 / p99 from send to [DONE], and p50 time to the first token), then the batched speed-up.
Servers run with --threads 1 (say so when quoting the numbers): on a shared 2-core machine
one torch thread per op is fastest for a model this small.

    python bench/serve_load.py [--clients 64] [--tokens 32] [--rounds 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")
PROMPTS = ["The Moon's orbit around Earth has", "Once upon a time", "In a shocking finding,", "The key to good software is",
           "Hello", "It was a bright cold day in April, and the clocks were striking thirteen.", "Why", "Dear Sir,"]


def make_checkpoint(directory: Path) -> None:
    sys.path.insert(0, SRC)
    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT
    from gpt2kit.tokenization import get_tokenizer

    torch.manual_seed(0)
    save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=1024)), directory, tokenizer=get_tokenizer("gpt2"))


class Server:
    def __init__(self, model: Path, *flags: str):
        env = {**os.environ, "PYTHONPATH": SRC, "GRADIO_ANALYTICS_ENABLED": "False"}
        self.proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", "serve", "--model", str(model), "--host", "127.0.0.1",
                                      "--port", "0", "--no-page", "--threads", "1", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", self.proc.stdout.readline())
        if not m:
            self.proc.kill()
            raise SystemExit("the server did not start")
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, tokens: int, seed: int) -> tuple[bool, float, float]:
    """(ok, seconds to [DONE], seconds to the first token) for one streamed completion."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": tokens, "stream": True, "seed": seed,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, done, got = None, False, None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return False, time.perf_counter() - t0, 0.0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if chunk["choices"] and first is None:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                got = chunk["usage"]["completion_tokens"]
    return done and got == tokens, time.perf_counter() - t0, first or 0.0


async def load(url: str, clients: int, tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await one_request(client, url, "warm up", tokens, 0)  # first-call costs out of the timing
        t0 = time.perf_counter()
        results = await asyncio.gather(*[one_request(client, url, PROMPTS[i % len(PROMPTS)], tokens, i) for i in range(clients)],
                                       return_exceptions=True)
        wall = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException) and r[0]]
    lat = sorted(r[1] for r in ok)
    ttft = sorted(r[2] for r in ok)

    def pct(xs, q):
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")

    return {"failures": clients - len(ok), "tok_s": len(ok) * tokens / wall, "wall": wall,
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "ttft50": pct(ttft, 0.5)}


def table(rows: list[list], header: list[str]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cols[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the two servers this many times; medians are shown")
    args = ap.parse_args()
    n = str(args.clients)
    configs = {
        "batched (max batch 64)": ["--max-concurrency", n, "--max-batch", "64", "--max-queue", n],
        "one at a time (max batch 1)": ["--max-concurrency", "1", "--max-batch", "1", "--max-queue", n],
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        make_checkpoint(model)
        runs: dict[str, list[dict]] = {k: [] for k in configs}
        for _ in range(args.rounds):
            for name, flags in configs.items():
                server = Server(model, *flags)
                try:
                    runs[name].append(asyncio.run(load(server.url, args.clients, args.tokens)))
                finally:
                    server.close()

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    rows = [[name, sum(r["failures"] for r in runs[name]), f"{med(name, 'tok_s'):.0f}", f"{med(name, 'wall'):.2f}",
             f"{med(name, 'p50'):.2f}", f"{med(name, 'p99'):.2f}", f"{med(name, 'ttft50'):.2f}"] for name in configs]
    print(f"gpt2kit serve load: {args.clients} concurrent streaming clients x {args.tokens} tokens, tiny GPT-2 "
          f"(2 layers, 32 dims, GPT-2 vocabulary), {args.rounds} round(s), server --threads 1")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(table(rows, ["server", "failures", "tokens/s", "wall s", "p50 latency s", "p99 latency s", "p50 first token s"]))
    a, b = configs
    print(f"batched / one-at-a-time throughput: {med(a, 'tok_s') / med(b, 'tok_s'):.1f}x")


if __name__ == "__main__":
    main()
