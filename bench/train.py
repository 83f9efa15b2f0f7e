"""Training speed on nanoGPT's CPU config for shakespeare_char, beside a nanoGPT-style eager loop.

Config (nanoGPT README, "I only have a macbook"): 4L/4H/128d, block 64, batch 12, 2000 iters,
lr 1e-3 -> 1e-4 cosine, warmup 100, beta2 0.99, dropout 0, eval every 250 iters x 20 batches.
nanoGPT takes 132 s on a 2-core machine of this kind and reaches val loss 1.8857.

Rows:
  nanogpt-style   the same model and data through a plain loop written as nanoGPT's train.py
                  is (eager, foreach AdamW, torch's default threads); `--peer` runs it
  gpt2kit         `gpt2kit train --preset shakespeare-char`, as a user runs it
  gpt2kit ddp2    the same global batch split over 2 single-threaded processes (torchrun, gloo)

    python bench/train.py --data ../shared/data/tinyshakespeare.txt [--peer] [--iters 2000]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, peak_rss_mb, table  # noqa: E402

CONFIG = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_iters=100,
              beta2=0.99, dropout=0.0, eval_interval=250, eval_iters=20, weight_decay=0.1, grad_clip=1.0)


def nanogpt_style(data_dir: str, iters: int) -> tuple[float, float]:
    """nanoGPT's loop: random offsets from np.random, foreach AdamW, eval with estimate_loss."""
    import numpy as np
    import torch

    from gpt2kit.config import GPTConfig
    from gpt2kit.data import read_tokens
    from gpt2kit.model import GPT

    c = CONFIG
    train = np.array(read_tokens(os.path.join(data_dir, "train.bin")))
    val = np.array(read_tokens(os.path.join(data_dir, "val.bin")))
    torch.manual_seed(1337)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=c["lr"], betas=(0.9, c["beta2"]))

    def get_batch(d):
        ix = torch.randint(len(d) - 64, (12,))
        x = torch.stack([torch.from_numpy(d[i:i + 64].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(d[i + 1:i + 65].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(it):
        if it < 100:
            return c["lr"] * (it + 1) / 101
        r = (it - 100) / (iters - 100)
        return c["min_lr"] + 0.5 * (1 + math.cos(math.pi * r)) * (c["lr"] - c["min_lr"])

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for name, d in (("train", train), ("val", val)):
            out[name] = float(np.mean([model(*get_batch(d))[1].item() for _ in range(20)]))
        model.train()
        return out

    t0 = time.perf_counter()
    x, y = get_batch(train)
    losses = {}
    for it in range(iters + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        if it % 250 == 0 or it == iters:
            losses = estimate_loss()
        if it == iters:
            break
        _, loss = model(x, y)
        x, y = get_batch(train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT logs every iteration (log_interval=1)
    return time.perf_counter() - t0, losses["val"]


def gpt2kit_run(data_dir: str, out: str, iters: int, ddp: int = 0, extra: list[str] = ()) -> tuple[float, float]:
    flags = ["--preset", "shakespeare-char", "--data", data_dir, "--out", out, "--max-iters", str(iters),
             "--lr-decay-iters", str(iters), "--no-progress", "--no-plot", "--samples", "0", *extra]
    if ddp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ddp}", "-m", "gpt2kit", "train",
               *flags, "--batch-size", str(CONFIG["batch_size"] // ddp), "--grad-accum", str(ddp), "--threads", "1"]
        # grad_accum counts micro-steps across ranks: 2 ranks x 1 micro-step of 6 = the same 12 sequences per step
    else:
        cmd = [sys.executable, "-m", "gpt2kit", "train", *flags]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"} if ddp else None)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    last = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][-1]
    return wall, last["val_loss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--peer", action="store_true", help="also run the nanoGPT-style loop (another ~2 minutes)")
    ap.add_argument("--no-ddp", action="store_true")
    args = ap.parse_args()
    from gpt2kit.data import prepare

    tmp = tempfile.mkdtemp()
    data_dir = os.path.join(tmp, "sc")
    prepare([args.data], data_dir, "char", progress=False)
    tokens = args.iters * 12 * 64
    print(machine())
    rows = []
    if args.peer:
        wall, val = nanogpt_style(data_dir, args.iters)
        rows.append(["nanogpt-style loop", f"{wall:.1f}", f"{tokens / wall:,.0f}", f"{val:.4f}"])
    wall, val = gpt2kit_run(data_dir, os.path.join(tmp, "run1"), args.iters)
    rows.append(["gpt2kit train", f"{wall:.1f}", f"{tokens / wall:,.0f}", f"{val:.4f}"])
    if not args.no_ddp:
        wall, val = gpt2kit_run(data_dir, os.path.join(tmp, "run2"), args.iters, ddp=2)
        rows.append(["gpt2kit train, torchrun x2 (1 thread each)", f"{wall:.1f}", f"{tokens / wall:,.0f}", f"{val:.4f}"])
    rows.append(["nanoGPT (published, same machine kind)", "132.0", f"{2000 * 768 / 132:,.0f}", "1.8857"])
    print(table(rows, ["run", "wall s", "tokens/s", "val loss"]))
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MiB (children not counted)")


if __name__ == "__main__":
    main()
