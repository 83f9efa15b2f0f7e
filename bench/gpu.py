"""One-shot CUDA benchmark (a few minutes on one H100): training throughput + MFU, and decode.

- GPT-2 124M training at block 1024: bf16 autocast, flash SDPA, fused AdamW, torch.compile;
  tokens/s and MFU (6N + 12 L T d flops per token, vs the GPU's dense bf16 peak).
- Decode tokens/s at batch 1 and 32 through gpt2kit.generate (the inference engine, paged KV cache), eager.

    python bench/gpu.py [--steps 30] [--batch 16] [--no-compile]
"""
from __future__ import annotations

import argparse
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    import gpt2kit
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    cfg = GPTConfig(pad_vocab_multiple=64)
    model = GPT(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = model if args.no_compile else torch.compile(model)
    B, T = args.batch, 1024
    x = torch.randint(0, 50257, (B, T), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = step_model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    tps = B * T / dt
    n = model.num_params()
    flops_per_token = 6 * n + 12 * cfg.n_layer * T * cfg.n_embd
    mfu = tps * flops_per_token / peak if peak else float("nan")
    print(f"device: {name}, torch {torch.__version__}, compile={not args.no_compile} (warm-up incl. compile {warm:.0f}s)")
    print(f"train 124M, block {T}, batch {B}, bf16: {dt * 1000:.1f} ms/step, {tps:,.0f} tokens/s, MFU {mfu:.1%}")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    model.eval()
    for batch in (1, 32):
        prompt = list(range(32))
        list(gpt2kit.generate(model, prompt, 8, temperature=0, num_samples=batch))
        torch.cuda.synchronize()
        t = time.perf_counter()
        list(gpt2kit.generate(model, prompt, 128, temperature=0, num_samples=batch))
        torch.cuda.synchronize()
        print(f"decode fp32 batch {batch}: {batch * 128 / (time.perf_counter() - t):,.0f} tokens/s")
    model.to(torch.bfloat16)
    for batch in (1, 32):
        list(gpt2kit.generate(model, list(range(32)), 8, temperature=0, num_samples=batch))  # warm-up: bf16 kernels load
        torch.cuda.synchronize()
        t = time.perf_counter()
        list(gpt2kit.generate(model, list(range(32)), 128, temperature=0, num_samples=batch))
        torch.cuda.synchronize()
        print(f"decode bf16 batch {batch}: {batch * 128 / (time.perf_counter() - t):,.0f} tokens/s")


if __name__ == "__main__":
    main()
