"""Decode speed: gpt2kit vs transformers' generate on the same random GPT-2 124M weights (CPU).

Prints one table: batch-1 greedy (32-token prompt, 128 new tokens) and batch-8 top-k 40
sampling, for gpt2kit in fp32 / bf16 / int8 weights beside HF fp32, alternating runs after a
warm-up, medians; plus the memory-bandwidth ceiling measured on the spot (a weight-sized
matrix-vector product), each engine's quality cost, and gpt2kit's peak RSS in a fresh process.

    python bench/decode.py [--repeat 3] [--new-tokens 128]
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, machine, peak_rss_mb, table, timeit  # noqa: E402


def bandwidth_gbs(n_params: int) -> float:
    """GB/s of one fp32 matrix-vector product as large as all of GPT-2's weights (768 columns)."""
    w, x = torch.randn(n_params // 768, 768), torch.randn(1, 768)
    t = timeit(lambda: torch.nn.functional.linear(x, w), repeat=7)
    return w.numel() * 4 / t / 1e9


def child_rss(model_dir: str) -> None:
    import gpt2kit

    m = gpt2kit.load_model(model_dir)
    list(gpt2kit.generate(m, list(range(32)), 32, temperature=0))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(f"{hwm_kb / 1024:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--child-rss", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss:
        return child_rss(args.child_rss)

    from transformers import GPT2Config, GPT2LMHeadModel

    import gpt2kit
    from gpt2kit.config import GPTConfig
    from gpt2kit.weights import build_model, from_hf_state_dict, to_dtype

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    fp32 = build_model(GPTConfig.from_hf(hf.config.to_dict()), from_hf_state_dict({k: v.clone() for k, v in hf.state_dict().items()}), column_major=True)  # as load_model builds it
    bf16 = to_dtype(copy.deepcopy(fp32), "bfloat16")  # as load_model(dtype=...) casts
    int8 = to_dtype(copy.deepcopy(fp32), "int8")
    weight_bytes = sum(p.numel() * 4 for p in fp32.parameters())
    N = args.new_tokens
    prompt = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(1))
    p_list = prompt[0].tolist()

    def hf_run(batch, sample):
        def f():
            with torch.inference_mode():
                hf.generate(prompt.repeat(batch, 1), attention_mask=torch.ones(batch, 32, dtype=torch.long), max_new_tokens=N,
                            min_new_tokens=N, do_sample=sample, top_k=40 if sample else None, pad_token_id=50256)
        return f

    def ours(model, batch, sample):
        return lambda: list(gpt2kit.generate(model, p_list, N, temperature=1.0 if sample else 0.0, top_k=40 if sample else None,
                                             num_samples=batch, seed=0))

    gbs = bandwidth_gbs(weight_bytes // 4)
    ceiling = gbs * 1e9 / weight_bytes
    print(machine())
    print(f"bandwidth: {gbs:.1f} GB/s on a weight-sized ({weight_bytes / 1e6:.0f} MB) fp32 matvec -> fp32 ceiling {ceiling:.1f} tokens/s for {weight_bytes / 1e6:.0f} MB of weights\n")

    rows = []
    for batch, sample in ((1, False), (8, True)):
        fns = {"HF generate fp32": hf_run(batch, sample), "gpt2kit fp32": ours(fp32, batch, sample),
               "gpt2kit bf16": ours(bf16, batch, sample), "gpt2kit int8": ours(int8, batch, sample)}
        t = alternate(fns, repeat=args.repeat)
        base = batch * N / t["HF generate fp32"]
        for name, sec in t.items():
            tps = batch * N / sec
            extra = f"{tps / ceiling:.0%}" if batch == 1 and "fp32" in name else ""
            rows.append([f"b{batch} {'top-k 40' if sample else 'greedy'}", name, f"{tps:.1f}", f"{tps / base:.2f}x", extra])
    print(table(rows, ["case", "engine", "tokens/s", "vs HF", "of ceiling"]))

    # quality cost on random weights: max |logit error| relative to the fp32 logit spread
    idx = torch.randint(0, 50257, (1, 128), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = fp32(idx)[0]
        spread = (ref.max() - ref.min()).item()
        for name, m in (("bf16", bf16), ("int8", int8)):
            out = m(idx)[0].float()
            agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
            print(f"quality {name}: max |dlogit| {(out - ref).abs().max().item():.4f} ({(out - ref).abs().max().item() / spread:.2%} of spread), argmax agreement {agree:.1%}")

    with tempfile.TemporaryDirectory() as d:
        gpt2kit.save_model(fp32, d)
        rss = float(subprocess.run([sys.executable, __file__, "--child-rss", d], capture_output=True, text=True, check=True).stdout)
    wmib = weight_bytes / 2**20
    print(f"peak RSS, gpt2kit fp32 load + decode in a fresh process: {rss:.0f} MiB = {rss / wmib:.2f}x the {wmib:.0f} MiB of weights")
    print(f"peak RSS of this benchmark process (HF + 3 gpt2kit copies): {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
