"""Training speed: `gpt2kit train` beside nanoGPT's own train.py, on nanoGPT's CPU config for shakespeare_char.

Config (nanoGPT README, "I only have a macbook"): 4L/4H/128d, block 64, batch 12, 2000 iters,
lr 1e-3 -> 1e-4 cosine, warmup 100, beta2 0.99, dropout 0, no bias, eval every 250 iters x 200
batches, log every 10, no compile, fp32 on the CPU, 2 torch threads each. Both read the same text.

Rows (only what this run measured):
  nanoGPT train.py   the checkout given by --nanogpt, run unmodified in a temp copy whose
                     data/shakespeare_char was built by its own prepare.py from --data (no download)
  gpt2kit train      `gpt2kit train --preset shakespeare-char`, with the same eval_iters/log_interval
  gpt2kit ddp2       with --ddp: the same global batch over 2 single-threaded processes (torchrun, gloo)

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python bench/train.py --nanogpt /tmp/nanoGPT --data ../shared/data/tinyshakespeare.txt [--iters 2000] [--repeat 1]

With --repeat K the two runs alternate K times and the medians are compared. nanoGPT's loop does
max_iters + 1 optimizer steps (it breaks after iter_num > max_iters); gpt2kit does max_iters.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, table  # noqa: E402

THREADS = 2  # --threads
EVAL_ITERS = 200
LOG_INTERVAL = 10
VAL_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def nanogpt_checkout(src: str, text: str, work: str) -> str:
    """A temp copy of the checkout (train.py reads configurator.py and data/ from its cwd) with
    shakespeare_char built by nanoGPT's own prepare.py, which downloads only when input.txt is missing."""
    if not os.path.isfile(os.path.join(src, "train.py")):
        raise SystemExit(f"{src} is not a nanoGPT checkout (no train.py); git clone https://github.com/karpathy/nanoGPT")
    dst = os.path.join(work, "nanogpt")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl"))
    data = os.path.join(dst, "data", "shakespeare_char")
    shutil.copyfile(text, os.path.join(data, "input.txt"))
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return dst


def nanogpt_run(checkout: str, out: str, iters: int) -> tuple[float, float, float]:
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--dtype=float32",
           f"--eval_iters={EVAL_ITERS}", f"--log_interval={LOG_INTERVAL}", "--block_size=64", "--batch_size=12",
           "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={iters}", f"--lr_decay_iters={iters}",
           "--dropout=0.0", f"--out_dir={out}"]
    return _timed(cmd, checkout, lambda stdout: float(VAL_LINE.findall(stdout)[-1][2]))


def gpt2kit_run(data_dir: str, out: str, iters: int, ddp: int = 0) -> tuple[float, float, float]:
    flags = ["--preset", "shakespeare-char", "--data", data_dir, "--out", out, "--max-iters", str(iters),
             "--lr-decay-iters", str(iters), "--eval-iters", str(EVAL_ITERS), "--log-interval", str(LOG_INTERVAL),
             "--no-progress", "--no-plot", "--samples", "0"]
    if ddp:
        # grad_accum counts micro-steps across ranks: 2 ranks x 1 micro-step of 6 = the same 12 sequences per step
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ddp}", "-m", "gpt2kit", "train",
               *flags, "--batch-size", str(12 // ddp), "--grad-accum", str(ddp), "--threads", "1"]
    else:
        cmd = [sys.executable, "-m", "gpt2kit", "train", *flags, "--threads", str(THREADS)]
    return _timed(cmd, None, lambda stdout: float(VAL_LINE.findall(stdout)[-1][2]), threads=1 if ddp else None)


def _timed(cmd: list[str], cwd: str | None, val_loss, threads: int | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, final val loss) of one training process. CPU time (user + sys of the
    process and its children) is less disturbed than wall time when other work shares the cores."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or THREADS)}
    t, c = time.perf_counter(), _children_cpu()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t, _children_cpu() - c
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-3000:]}")
    return wall, cpu, val_loss(r.stdout)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanogpt", required=True, metavar="DIR", help="a nanoGPT checkout (git clone of karpathy/nanoGPT)")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two runs this many times; medians are compared")
    ap.add_argument("--ddp", action="store_true", help="also time gpt2kit under torchrun with 2 processes")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads of each run (OMP_NUM_THREADS)")
    args = ap.parse_args()
    THREADS = args.threads
    from gpt2kit.data import prepare

    work = tempfile.mkdtemp(prefix="bench-train-")
    checkout = nanogpt_checkout(args.nanogpt, args.data, work)
    data_dir = os.path.join(work, "sc")
    prepare([args.data], data_dir, "char", progress=False)
    print(machine(), f"| load average before: {os.getloadavg()[0]:.2f}")
    runs = {"nanoGPT train.py": [], "gpt2kit train": []}
    for k in range(args.repeat):  # alternate, so drift in machine load hits both alike
        runs["nanoGPT train.py"].append(nanogpt_run(checkout, os.path.join(work, f"ng{k}"), args.iters))
        runs["gpt2kit train"].append(gpt2kit_run(data_dir, os.path.join(work, f"g2k{k}"), args.iters))
    if args.ddp:
        runs["gpt2kit train, torchrun x2 (1 thread each)"] = [gpt2kit_run(data_dir, os.path.join(work, "ddp"), args.iters, ddp=2)]
    tokens = args.iters * 12 * 64
    wall = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    rows = [[name, f"{wall[name]:.1f}", " ".join(f"{r[0]:.1f}" for r in rs), f"{cpu[name]:.1f}", f"{tokens / wall[name]:,.0f}",
             f"{rs[-1][2]:.4f}"] for name, rs in runs.items()]
    print(table(rows, ["run", "wall s (median)", "each run", "CPU s (median)", "tokens/s", "val loss"]))
    ng, g2k = "nanoGPT train.py", "gpt2kit train"
    print(f"gpt2kit / nanoGPT: wall time {wall[g2k] / wall[ng]:.3f}, CPU time {cpu[g2k] / cpu[ng]:.3f} "
          f"({args.iters} iters, {THREADS} threads each) | load average after: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
