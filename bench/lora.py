"""LoRA vs full finetuning of the same base model: trainable parameters, wall time, peak RSS, val loss.

Both finetunes start from one base and run the same iterations, batches and evals as separate
`gpt2kit train` processes (so each peak RSS is its own, from wait4). Without --init-from the
script first trains a char-level base (default 4L/4H/128d, block 64: --n-layer, --n-embd) on --data; with --init-from it
finetunes that model (--tokenizer must then be the model's: gpt2 for GPT-2 checkpoints).

    python bench/lora.py --data ../shared/data/tinyshakespeare.txt [--base-iters 600] [--iters 300] [--rank 8]
    python bench/lora.py --init-from runs/my-char-model --tokenizer runs/my-char-model --iters 300

Other processes share the cores: wall times are indicative; the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, table  # noqa: E402

DONE = re.compile(r"val loss ([\d.]+) \(best ([\d.]+)\)")


def train(out: str, flags: list[str], threads: int) -> dict:
    """One `gpt2kit train` process: wall seconds, its own peak RSS (MiB, from wait4), final and best val loss."""
    cmd = [sys.executable, "-m", "gpt2kit", "train", "--out", out, "--no-progress", "--no-plot", "--threads", str(threads), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage; Popen never reaps it
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0), se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode:
        raise SystemExit(f"gpt2kit train --out {out} failed:\n{stderr[-3000:]}")
    final, best = map(float, DONE.findall(stdout)[-1])
    return {"wall": wall, "rss": usage.ru_maxrss / 1024, "val": final, "best": best, "stdout": stdout}


def dir_mb(path: str, names: tuple[str, ...]) -> float:
    return sum(os.path.getsize(os.path.join(path, n)) for n in names if os.path.exists(os.path.join(path, n))) / 2**20


def trainable(base: str, rank: int, alpha: float, targets: str) -> tuple[int, int]:
    """(all parameters, LoRA-trainable parameters) of the base, counted on the model itself."""
    from gpt2kit.lora import add_lora, trainable_params
    from gpt2kit.lora_format import LoraSpec, parse_targets
    from gpt2kit.weights import load_model

    model = load_model(base)
    total = model.num_params(non_embedding=False)
    return total, trainable_params(add_lora(model, LoraSpec(rank, alpha, parse_targets(targets))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--init-from", default=None, help="finetune this model (default: train a small char base first)")
    ap.add_argument("--tokenizer", default="char", help="tokenizer to prepare --data with (the base's own with --init-from)")
    ap.add_argument("--base-iters", type=int, default=600, help="iterations of the base model when there is no --init-from")
    ap.add_argument("--n-layer", type=int, default=4, help="layers of that base")
    ap.add_argument("--n-embd", type=int, default=128, help="width of that base (heads of 32 dims each)")
    ap.add_argument("--iters", type=int, default=300, help="finetuning iterations, both runs")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4, help="full finetuning learning rate")
    ap.add_argument("--lora-lr", type=float, default=2e-3, help="LoRA learning rate (adapters usually take a larger one)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="c_attn,c_proj,c_fc")
    ap.add_argument("--eval-iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (1: the cores are shared)")
    ap.add_argument("--work", default=None, help="keep the runs here (default: a temp dir)")
    args = ap.parse_args()
    from gpt2kit.data import prepare

    work = args.work or tempfile.mkdtemp(prefix="bench-lora-")
    data = os.path.join(work, "data")
    if not os.path.isdir(data):
        prepare([args.data], data, args.tokenizer, progress=False)
    print(machine(), f"| load average before: {os.getloadavg()[0]:.2f}")
    base = args.init_from
    if base is None:
        base = os.path.join(work, "base")
        model = ["--n-layer", str(args.n_layer), "--n-head", str(args.n_embd // 32), "--n-embd", str(args.n_embd),
                 "--block-size", "64", "--dropout", "0.0"]
        r = train(base, ["--data", data, *model, "--max-iters", str(args.base_iters), "--lr", "1e-3", "--min-lr", "1e-4",
                         "--lr-decay-iters", str(args.base_iters), "--eval-interval", str(args.base_iters),
                         "--eval-iters", str(args.eval_iters), "--batch-size", str(args.batch_size)], args.threads)
        print(f"base: {args.base_iters} iters from scratch in {r['wall']:.1f}s, val loss {r['val']:.4f}")
    common = ["--init-from", base, "--data", data, "--max-iters", str(args.iters), "--lr-decay-iters", str(args.iters),
              "--warmup-iters", "0", "--eval-interval", str(args.iters), "--eval-iters", str(args.eval_iters),
              "--batch-size", str(args.batch_size), "--dropout", "0.0"]
    lora_flags = ["--lora-rank", str(args.rank), "--lora-alpha", str(args.alpha), "--lora-targets", args.targets]
    full = train(os.path.join(work, "full"), [*common, "--lr", str(args.lr), "--min-lr", str(args.lr / 10)], args.threads)
    lora = train(os.path.join(work, "lora"), [*common, *lora_flags, "--lr", str(args.lora_lr), "--min-lr", str(args.lora_lr / 10)], args.threads)
    total, n_lora = trainable(base, args.rank, args.alpha, args.targets)
    base_val = float(re.search(r"step 0: train loss [\d.]+, val loss ([\d.]+)", full["stdout"]).group(1))
    rows = [
        [f"full (lr {args.lr:g})", f"{total:,}", f"{full['wall']:.1f}", f"{full['rss']:.0f}",
         f"{dir_mb(os.path.join(work, 'full'), ('model.safetensors',)):.2f}", f"{full['val']:.4f}"],
        [f"LoRA r={args.rank} a={args.alpha:g} {args.targets} (lr {args.lora_lr:g})", f"{n_lora:,} ({100 * n_lora / total:.2f}%)",
         f"{lora['wall']:.1f}", f"{lora['rss']:.0f}", f"{dir_mb(os.path.join(work, 'lora'), ('adapter_model.safetensors',)):.2f}",
         f"{lora['val']:.4f}"],
    ]
    print(f"finetuning {base} for {args.iters} iters (batch {args.batch_size}), val loss of the base: {base_val:.4f}")
    print(table(rows, ["run", "trainable params", "wall s", "peak RSS MiB", "saved MiB", "val loss"]))
    print(f"load average after: {os.getloadavg()[0]:.2f}; runs in {work}")


if __name__ == "__main__":
    main()
