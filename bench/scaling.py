"""How cost grows: decode ms/token at context 64, 256, 1024 (GPT-2 124M), and training tokens/s for 3 sizes.

    python bench/scaling.py
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, peak_rss_mb, table  # noqa: E402


def decode_ms_per_token(model, ctx: int, steps: int = 32) -> float:
    """Prefill `ctx` tokens in the engine (paged KV cache), then time `steps` decode steps of one row."""
    from gpt2kit.inference.engine import Engine
    from gpt2kit.sampling_params import SamplingParams

    engine = Engine(model, max_rows=1, max_step_tokens=ctx)
    engine.add(torch.randint(0, 50257, (ctx,)).tolist(), SamplingParams(temperature=0), max_tokens=steps + 4)
    for _ in range(4):  # the prefill, then warm-up at this length
        engine.step()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - t) / steps * 1000


def train_tokens_per_s(n_layer: int, n_embd: int, n_head: int, iters: int = 10) -> tuple[float, float]:
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=256, vocab_size=50257, pad_vocab_multiple=64))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 50257, (4, 256))

    def step():
        _, loss = m(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return 4 * 256 * iters / (time.perf_counter() - t), m.num_params() / 1e6


def main() -> None:
    from gpt2kit.config import preset
    from gpt2kit.model import GPT

    torch.manual_seed(0)
    model = GPT(preset("gpt2")).eval()
    print(machine())
    rows = []
    base = None
    for ctx in (64, 256, 1024 - 40):
        ms = decode_ms_per_token(model, ctx)
        base = base or ms
        rows.append([ctx, f"{ms:.1f}", f"{1000 / ms:.1f}", f"{ms / base:.2f}x"])
    print(table(rows, ["context", "ms/token", "tokens/s", "vs ctx 64"]))
    print()
    rows = []
    for nl, ne, nh in ((4, 256, 4), (6, 384, 6), (12, 768, 12)):
        tps, mparams = train_tokens_per_s(nl, ne, nh)
        rows.append([f"{nl}L/{ne}d", f"{mparams:.1f}M", f"{tps:,.0f}"])
    print(table(rows, ["model (block 256, batch 4, vocab 50257)", "params", "train tokens/s"]))
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
