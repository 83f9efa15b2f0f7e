"""Prefill: one 1024-token forward of GPT-2 124M (random weights, fp32), gpt2kit vs transformers.

    python bench/prefill.py [--repeat 5] [--tokens 1024]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, machine, peak_rss_mb, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2kit.config import GPTConfig
    from gpt2kit.weights import build_model, from_hf_state_dict

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    ours = build_model(GPTConfig.from_hf(hf.config.to_dict()), from_hf_state_dict({k: v.clone() for k, v in hf.state_dict().items()}), column_major=True)  # as load_model builds it
    idx = torch.randint(0, 50257, (1, args.tokens), generator=torch.Generator().manual_seed(1))

    def run_hf():
        with torch.inference_mode():
            hf(idx, use_cache=True)

    from gpt2kit.inference.engine import Engine
    from gpt2kit.sampling_params import SamplingParams

    ids = idx[0].tolist()

    def run_ours():  # what generate() does: one engine step fills the paged KV cache, logits for the last position only
        engine = Engine(ours, max_rows=1, max_step_tokens=args.tokens)
        engine.add(ids, SamplingParams(temperature=0), max_tokens=1)
        engine.step()

    def run_ours_full():  # all 1024 positions' logits, as HF returns them
        with torch.inference_mode():
            ours(idx)

    from gpt2kit.weights import for_inference

    packed = for_inference(build_model(GPTConfig.from_hf(hf.config.to_dict()), from_hf_state_dict({k: v.clone() for k, v in hf.state_dict().items()}),
                                       column_major=("transformer.wte.weight",)))  # as load_model(inference=True) builds it

    def run_packed():
        engine = Engine(packed, max_rows=1, max_step_tokens=args.tokens)
        engine.add(ids, SamplingParams(temperature=0), max_tokens=1)
        engine.step()

    t = alternate({"HF forward (use_cache)": run_hf, "gpt2kit prefill (engine step, last logits)": run_ours,
                   "gpt2kit prefill, weights prepacked (as CLI verbs load)": run_packed,
                   "gpt2kit forward (all logits)": run_ours_full}, repeat=args.repeat)
    base = args.tokens / t["HF forward (use_cache)"]
    print(machine())
    print(table([[k, f"{v * 1000:.0f}", f"{args.tokens / v:.0f}", f"{args.tokens / v / base:.2f}x"] for k, v in t.items()],
                ["engine", "ms", "tokens/s", "vs HF"]))
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
