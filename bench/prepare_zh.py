"""Data prep on a ~2 MB Chinese text: `prepare(..., num_proc=1)` vs `num_proc=2`, per tokenizer kind.

The text repeats the shared tang300 + song100 poems until it is >= --mb megabytes of UTF-8,
with '%' lines between poems (--doc-sep %). Each measurement runs in a fresh process and
times prepare() alone (vocabulary building, tokenising, writing), best of --repeat; the 1- and
2-process outputs are checked to be identical. The peer is the same pure-Python work run in 1
and 2 processes: it shows the speed-up the machine can give right now (other processes on a
shared 2-core box take cores). The last column is a model, not a measurement: the 1-process
CPU time over (the 2-process run's parent CPU + its workers' CPU / 2), i.e. the speed-up on two
idle cores if the workers' work splits evenly.

    python bench/prepare_zh.py                    # kinds: word char bpe bert gpt2
    python bench/prepare_zh.py --kinds word --repeat 3
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "zh"

TIMER = """
import resource, sys, time
from gpt2kit.data import prepare
src, out, spec, n = sys.argv[1:5]
cpu = lambda who: sum(resource.getrusage(who)[:2])
t, p0, c0 = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
prepare([src], out, spec, doc_sep="%", num_proc=int(n), progress=False)
print(time.perf_counter() - t, cpu(resource.RUSAGE_SELF) - p0, cpu(resource.RUSAGE_CHILDREN) - c0)
"""


def build_text(mb: float, tmp: Path) -> Path:
    files = [DATA / "tang300.txt", DATA / "song100.txt"]
    if not all(f.exists() for f in files):
        sys.exit(f"shared data not found in {DATA}")
    base = "".join(f.read_text(encoding="utf-8").rstrip("\n") + "\n%\n" for f in files)
    reps = int(mb * 1e6 / len(base.encode("utf-8"))) + 1
    path = tmp / "zh.txt"
    path.write_text(base * reps, encoding="utf-8")
    return path


def tokenizer_specs(kinds: list[str], tmp: Path) -> dict[str, str]:
    sys.path.insert(0, str(ROOT / "src"))
    specs = {}
    files = [str(DATA / "tang300.txt"), str(DATA / "song100.txt")]
    for kind in kinds:
        if kind == "bpe":
            from gpt2kit.tokenization import train_bpe

            train_bpe(files, 8000, tmp / "bpe")
            specs[kind] = f"bpe:{tmp / 'bpe'}"
        elif kind == "bert":
            from tokenizers import BertWordPieceTokenizer

            ref = BertWordPieceTokenizer()
            ref.train(files, vocab_size=8000, show_progress=False)
            ref.save_model(str(tmp))
            specs[kind] = f"bert:{tmp / 'vocab.txt'}"
        else:
            specs[kind] = kind
    return specs


def _burn(n: int) -> None:
    s = 0
    for i in range(n):
        s += i * i


def ceiling(n: int = 10_000_000) -> float:
    """The 2-process speed-up this machine gives right now on pure Python work (2.0 on 2 idle cores)."""
    import multiprocessing as mp
    import time

    t = time.perf_counter()
    _burn(n)
    _burn(n)
    one = time.perf_counter() - t
    with mp.get_context("fork").Pool(2) as pool:
        t = time.perf_counter()
        pool.map(_burn, [n, n])
        two = time.perf_counter() - t
    return one / two


def run(src: Path, out: Path, spec: str, n: int) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, its workers' CPU s) for one prepare() in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-c", TIMER, str(src), str(out), spec, str(n)], env=env,
                       capture_output=True, text=True, check=True)
    wall, parent, workers = map(float, r.stdout.strip().splitlines()[-1].split())
    return wall, parent, workers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="word,char,bpe,bert,gpt2")
    ap.add_argument("--mb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = build_text(args.mb, tmp)
        specs = tokenizer_specs(kinds, tmp)
        size = src.stat().st_size
        print(f"text: {size / 1e6:.2f} MB UTF-8, {len(src.read_text(encoding='utf-8')):,} characters; "
              f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
        print(f"peer: the same pure-Python work in 1 vs 2 processes: {ceiling():.2f}x (the ceiling on this machine now)")
        print(f"{'kind':<6} {'1 process (s)':>14} {'2 processes (s)':>16} {'speed-up':>9}  {'same output':<11}  "
              f"2-process CPU: parent + workers (s) -> idle-machine model")
        for kind in kinds:
            t = {}
            for n in (1, 2):
                t[n] = min((run(src, tmp / f"{kind}{n}", specs[kind], n) for _ in range(args.repeat)), key=lambda r: r[0])
            same = all((tmp / f"{kind}1" / f).read_bytes() == (tmp / f"{kind}2" / f).read_bytes() for f in ("train.bin", "val.bin"))
            (w1, p1, c1), (w2, p2, c2) = t[1], t[2]
            # on 2 idle cores the parent's own work is serial and the workers' CPU splits over 2 cores
            model = (p1 + c1) / (p2 + c2 / 2)
            print(f"{kind:<6} {w1:>14.2f} {w2:>16.2f} {w1 / w2:>8.2f}x  {str(same):<11}  "
                  f"{p2:.2f} + {c2:.2f} -> {model:.2f}x", flush=True)
        print(f"peer again: {ceiling():.2f}x; load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
