"""Streaming prepare at scale: wall time, MB/s, peak RSS and shards for 0.25, 1 and 2 GB of text (issue 13).

The input is tiny shakespeare and the standard library's .py files, concatenated and repeated
until it reaches each size (one big text file: the hardest case for memory, one document read
block by block). Each run is `gpt2kit prepare INPUT --tokenizer gpt2 --num-proc N` in a fresh
process. Peak RSS is measured two ways: the largest single process of the tree
(getrusage(RUSAGE_CHILDREN).ru_maxrss of a wrapper process, exact) and the whole tree (psutil, the sum of the
prepare process and its workers sampled every 0.1 s; forked workers share pages with the
parent, so the sum counts some twice: an upper bound). Flat RSS as the input grows is the
claim: memory holds one shard (100M tokens, 200 MB as uint16) and a few batches in flight.
The 1- and N-process outputs are compared byte for byte.

    python bench/prepare_scale.py                        # 0.25, 1, 2 GB x num-proc 1, 2 (long on 2 cores)
    python bench/prepare_scale.py --sizes 0.05,0.1 --shard-tokens 10000000   # a quick run
"""
from __future__ import annotations

import argparse
import filecmp
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def seed_text() -> str:
    parts = [SHAKESPEARE.read_text(encoding="utf-8")] if SHAKESPEARE.exists() else []
    for f in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        parts.append(open(f, encoding="utf-8", errors="replace").read())
    return "\n".join(parts)


def build_input(gb: float, path: Path, seed: str) -> int:
    """Write seed repeated to `gb` GB (10^9 bytes); returns the size in bytes."""
    block = seed.encode("utf-8")
    target, n = int(gb * 1e9), 0
    with open(path, "wb") as f:
        while n < target:
            chunk = block[: target - n]
            cut = chunk.rfind(b"\n") + 1 if len(chunk) < len(block) else len(chunk)  # end on a whole line
            f.write(chunk[:cut or len(chunk)])
            n += cut or len(chunk)
    return n


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


# runs prepare as its child, then prints the largest RSS of any process below it (prepare or a worker), in KiB
WRAP = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print("MAXRSS", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(r.returncode)"""


def run_prepare(src: Path, out: Path, num_proc: int, shard_tokens: int) -> dict:
    """One prepare in a fresh process: wall time, peak RSS (largest process; tree sum), shards."""
    cmd = [sys.executable, "-c", WRAP, sys.executable, "-m", "gpt2kit", "prepare", str(src), "--out", str(out),
           "--tokenizer", "gpt2", "--num-proc", str(num_proc), "--shard-tokens", str(shard_tokens)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, tree_rss(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - t
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {stderr[-2000:]}")
    lines = stdout.strip().splitlines()
    return {"wall": wall, "tree_mb": peak_tree / 2**20, "largest_mb": int(lines[-1].split()[1]) / 1024, "line": lines[-2],
            "shards": sum(1 for f in os.listdir(out) if f.endswith(".bin"))}


def differences(a: Path, b: Path) -> list[str]:
    """Top-level files that differ between two prepared dirs (or are only in one)."""
    names = sorted(set(os.listdir(a)) | set(os.listdir(b)))
    files = [n for n in names if os.path.isfile(a / n) or os.path.isfile(b / n)]
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return sorted(mismatch + errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.25,1,2", help="input sizes in GB (10^9 bytes), comma-separated (default: 0.25,1,2)")
    ap.add_argument("--num-proc", default="1,2", help="tokenising processes to compare (default: 1,2)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default: 100M, as llm.c)")
    ap.add_argument("--tmp", default=None, help="where to write the inputs and outputs (default: a temp dir; needs ~3x the largest size)")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    procs = [int(n) for n in args.num_proc.split(",")]
    seed = seed_text()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for gb in sizes:
            src = tmp / "input.txt"
            size = build_input(gb, src, seed)
            outs = []
            for n in procs:
                r = run_prepare(src, tmp / f"out{n}", n, args.shard_tokens)
                outs.append(tmp / f"out{n}")
                rows.append([f"{size / 1e9:.2f} GB", n, f"{r['wall']:.1f}", f"{size / 1e6 / r['wall']:.1f}",
                             f"{r['largest_mb']:.0f}", f"{r['tree_mb']:.0f}", r["shards"],
                             "yes" if n == procs[0] else (", ".join(differences(outs[0], outs[-1])) or "yes")])
                print(f"{gb} GB, num_proc {n}: {r['line']}", file=sys.stderr)
            for o in outs:
                shutil.rmtree(o)
            src.unlink()
    print(table(rows, ["input", "num_proc", "wall s", "MB/s", "peak RSS MB (largest proc)", "peak RSS MB (tree sum)",
                       "shards", "identical to num_proc 1 (else: differing files)"]))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
