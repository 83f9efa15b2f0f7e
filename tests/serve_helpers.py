"""Shared by the serve tests: tiny checkpoints and a real `gpt2kit serve` process on a loopback port."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from gpt2kit import save_model
from gpt2kit.config import GPTConfig
from gpt2kit.model import GPT
from gpt2kit.tokenization import get_tokenizer

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared (import it into a test module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_checkpoint(directory: Path, block_size: int = 1024, seed: int = 0) -> Path:
    """A tiny random-weight GPT-2 with GPT-2's tokenizer; block 1024 so long streams are possible.

    Matrices are drawn with std 0.5 (not GPT-2's 0.02) so the next-token distribution is far
    from uniform and greedy decoding does not repeat one token: outputs tell settings apart.
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    save_model(model, directory, tokenizer=get_tokenizer("gpt2"))
    return directory


def tstr(t: int) -> str:
    """OpenAI's spelling of a GPT-2 token in completions logprobs: its text, or 'bytes:\\xNN...' when not whole UTF-8."""
    b = get_tokenizer("gpt2").token_bytes(t)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def byte_tokens(tok, text: str) -> list[int]:
    """One GPT-2 token per UTF-8 byte of text (ids 0..255 are the single-byte tokens)."""
    by_byte = {tok.token_bytes(i): i for i in range(256)}
    return [by_byte[bytes([b])] for b in text.encode("utf-8")]


def scripted_model(script: list[int], block_size: int = 64) -> GPT:
    """A real GPT whose weights make it emit script[p] as the next token at position p, whatever the input.

    The blocks' output projections are zero, so the residual stream is wte[token] + wpe[pos].
    Each scripted token gets its own embedding axis; wpe[p] points far along the axis of
    script[p] (10x the token's own), so ln_f's output, scored against the tied wte, picks
    script[p] by a logit margin of ~40: deterministic even when sampling at temperature 2.
    """
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=block_size)
    distinct = sorted(set(script))
    assert len(distinct) <= cfg.n_embd and len(script) <= block_size
    torch.manual_seed(0)
    m = GPT(cfg)
    axis = {t: i for i, t in enumerate(distinct)}
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "c_proj" in name:
                p.zero_()
        wte, wpe = m.transformer.wte.weight, m.transformer.wpe.weight
        for t in distinct:
            wte[t].zero_()
            wte[t, axis[t]] = 10.0
        wpe.zero_()
        for pos, t in enumerate(script):
            wpe[pos, axis[t]] = 100.0
    return m.eval()


class Server:
    """`python -m gpt2kit serve ... --port 0` in a subprocess; .url is read from its first line."""

    def __init__(self, *args: str, timeout: float = 300.0):
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("GPT2KIT_API_KEY", None)
        self.log = tempfile.TemporaryFile("w+")  # stderr: a file, so a chatty server never blocks on a full pipe
        self.proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", "serve", "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not m:
            self.close()
            err = self.stderr()
            raise RuntimeError(f"server did not start: {line!r} {err[-2000:]}")
        self.url = f"http://127.0.0.1:{m.group(1)}"
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=60).json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
