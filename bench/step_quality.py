"""Perplexity through the C decode step, per weight format: what int8/int4 weights and int8 activations cost.

`gpt2kit eval perplexity` scores prompts, which run the torch model; sampling runs the C decode step
(inference/native.py), where int8 and int4 weights take int8-rounded activations on CPUs with VNNI.
This feeds a trained checkpoint's validation tokens one position at a time through that step
(windows of the model's block size, side by side as rows) and prints each format's perplexity.

    python bench/step_quality.py --model runs/sc --data data/shakespeare_char [--tokens 8192]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import table  # noqa: E402

CASES = [("float32", None), ("int8", False), ("int8", True), ("int4", False), ("int4", True)]


def step_nll(model, windows: list[list[int]], int8_activations: bool | None) -> tuple[float, int, bool]:
    """Summed next-token NLL over `windows` (rows of equal length) decoded position by position."""
    from gpt2kit.inference.kv import BLOCK_LEN, BlockPool
    from gpt2kit.inference.native import MAX_ROWS, NativeStep

    T = len(windows[0])
    per_row = -(-T // BLOCK_LEN)
    total, count, acts = 0.0, 0, False
    for i in range(0, len(windows), MAX_ROWS):
        rows = windows[i : i + MAX_ROWS]
        pool = BlockPool(model.config, 1 + per_row * len(rows), dtype=model.transformer.wte.weight.dtype)
        step = NativeStep(model, pool, int8_activations)
        acts = step.int8_activations
        tables = [list(range(1 + r * per_row, 1 + (r + 1) * per_row)) for r in range(len(rows))]
        for p in range(T - 1):
            logits = step([w[p] for w in rows], [p] * len(rows), tables, torch.get_num_threads())
            lp = torch.log_softmax(logits.double(), -1)
            total -= lp[torch.arange(len(rows)), [w[p + 1] for w in rows]].sum().item()
            count += len(rows)
    return total, count, acts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained gpt2kit checkpoint directory")
    ap.add_argument("--data", required=True, help="its validation tokens (what `gpt2kit eval perplexity --data` takes)")
    ap.add_argument("--tokens", type=int, default=8192, help="how many validation tokens to score (default 8192)")
    args = ap.parse_args()

    import gpt2kit
    from gpt2kit.evaluate import load_eval_tokens
    from gpt2kit.inference import native

    if not native.available():
        sys.exit("the C decode step is not built (or GPT2KIT_NATIVE=0); reinstall gpt2kit with a C compiler")
    ids = load_eval_tokens(args.data, gpt2kit.get_tokenizer(args.model))[: args.tokens].tolist()
    rows, base, n = [], None, 0
    for dtype, acts in CASES:
        m = gpt2kit.load_model(args.model, dtype=dtype, inference=True)
        T = m.config.block_size
        windows = [ids[i : i + T] for i in range(0, len(ids) - T + 1, T)]
        if not windows:
            sys.exit(f"--data holds fewer than one window of {T} tokens")
        nll, n, used = step_nll(m, windows, acts)
        base = base or math.exp(nll / n)
        label = "int8 activations" if used else "fp32 activations"
        if acts and not used:
            label += " (int8 activations unavailable: no AVX512-VNNI)"
        rows.append([dtype, label, f"{nll / n:.6f}", f"{math.exp(nll / n):.6f}", f"{math.exp(nll / n) / base - 1:+.2%}"])
    print(f"{args.model}: {len(windows)} windows of {T} tokens ({n} predictions), through the C decode step")
    print(table(rows, ["weights", "activations", "nll", "perplexity", "vs float32"]))


if __name__ == "__main__":
    main()
