"""Decode speed of numpy_gpt2 beside gpt2kit's torch engine: GPT-2 124M, random weights, batch 1.

    PYTHONPATH=src python bench/numpy_decode.py [--new-tokens 64] [--repeats 5] [--threads N]

One random GPT-2 124M checkpoint is written to a temp dir; each backend then runs in its own
child process (so peak RSS, from resource.getrusage, is that backend's alone, and the NumPy
child never imports torch). Each child loads the checkpoint, warms up, and runs greedy
decoding `repeats` times. Decode tokens/s counts the tokens after the first (each one a
forward of one token over the KV cache); "first token" is the prompt's prefill plus one
sample. Figures are medians. Both children must produce the same greedy tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def child(backend: str, model_dir: str, prompt_len: int, new_tokens: int, repeats: int, threads: int | None) -> dict:
    import numpy as np

    prompt = np.random.default_rng(0).integers(0, 50257, prompt_len).tolist()
    if backend == "numpy":
        from gpt2kit import numpy_gpt2

        model = numpy_gpt2.load(model_dir)
        run = lambda n: numpy_gpt2.generate(model, prompt, n, temperature=0.0)
    else:
        import torch

        from gpt2kit import generate, load_model

        if threads:
            torch.set_num_threads(threads)
        model = load_model(model_dir, inference=True)  # as the CLI verbs load it (weights prepacked)
        run = lambda n: generate(model, prompt, n, temperature=0.0)
    list(run(8))  # warm-up: allocator, BLAS thread pool
    rates, firsts, tokens = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        stamps, ids = [], []
        for t in run(new_tokens):
            stamps.append(time.perf_counter())
            ids.append(t)
        firsts.append(stamps[0] - t0)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        tokens = ids
    threads_used, version = None, np.__version__
    if backend == "torch":
        threads_used, version = torch.get_num_threads(), torch.__version__
    return {
        "backend": backend,
        "decode_tok_s": statistics.median(rates),
        "decode_tok_s_all": rates,
        "first_token_ms": 1e3 * statistics.median(firsts),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "torch_imported": "torch" in sys.modules,
        "threads": threads_used,
        "version": version,
        "tokens": tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both backends (torch.set_num_threads, OPENBLAS/OMP_NUM_THREADS); default: each library's own")
    ap.add_argument("--child", choices=["numpy", "torch", "checkpoint"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "checkpoint":
        import torch

        from gpt2kit import GPT, save_model
        from gpt2kit.config import preset

        torch.manual_seed(0)
        save_model(GPT(preset("gpt2")), args.model_dir)  # random weights, GPT-2 124M shapes
        return
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.prompt_len, args.new_tokens, args.repeats, args.threads)))
        return

    # The parent stays small and torch-free: Linux carries ru_maxrss across fork + exec, so a
    # parent holding the model would set every child's "peak RSS".
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, __file__, "--child", "checkpoint", "--model-dir", d], check=True)
        env = dict(os.environ)
        if args.threads:
            env.update(OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        results = {}
        for backend in ("numpy", "torch"):
            cmd = [sys.executable, __file__, "--child", backend, "--model-dir", d, "--prompt-len", str(args.prompt_len),
                   "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            results[backend] = json.loads(out.strip().splitlines()[-1])
    n, t = results["numpy"], results["torch"]
    same = n["tokens"] == t["tokens"]
    print(f"GPT-2 124M (random weights), batch 1, greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
          f"median of {args.repeats}; threads: {args.threads or 'library default'} (os.cpu_count()={os.cpu_count()}); "
          f"torch {t['version']}, numpy {n['version']}")
    print(f"{'backend':<14} {'decode tok/s':>12} {'first token ms':>15} {'peak RSS MB':>12}  {'all decode tok/s'}")
    for r, name in ((n, "numpy_gpt2"), (t, f"torch ({t['threads']} thr)")):
        print(f"{name:<14} {r['decode_tok_s']:12.1f} {r['first_token_ms']:15.1f} {r['peak_rss_mb']:12.0f}  "
              + " ".join(f"{x:.1f}" for x in r["decode_tok_s_all"]))
    print(f"numpy / torch decode speed: {n['decode_tok_s'] / t['decode_tok_s']:.2f}x; same greedy tokens: {'yes' if same else 'NO'}; "
          f"torch imported by the numpy child: {'yes' if n['torch_imported'] else 'no'}")


if __name__ == "__main__":
    main()
