"""Data prep on a ~2 MB Chinese text: `prepare(..., num_proc=1)` vs `num_proc=2`, per tokenizer kind.

The text repeats the shared tang300 + song100 poems until it is >= --mb megabytes of UTF-8,
with '%' lines between poems (--doc-sep %). Each measurement runs in a fresh process and
times prepare() alone (vocabulary building, tokenising, writing), best of --repeat; the 1- and
2-process outputs are checked to be identical. The machine's load average is printed
because other processes on a shared 2-core box take cores from the 2-process run.

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
import sys, time
from gpt2kit.data import prepare
src, out, spec, n = sys.argv[1:5]
t = time.perf_counter()
prepare([src], out, spec, doc_sep="%", num_proc=int(n), progress=False)
print(time.perf_counter() - t)
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


def run(src: Path, out: Path, spec: str, n: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-c", TIMER, str(src), str(out), spec, str(n)], env=env,
                       capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


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
        print(f"{'kind':<6} {'1 process (s)':>14} {'2 processes (s)':>16} {'speed-up':>9}  same output")
        for kind in kinds:
            t = {}
            for n in (1, 2):
                t[n] = min(run(src, tmp / f"{kind}{n}", specs[kind], n) for _ in range(args.repeat))
            same = all((tmp / f"{kind}1" / f).read_bytes() == (tmp / f"{kind}2" / f).read_bytes() for f in ("train.bin", "val.bin"))
            print(f"{kind:<6} {t[1]:>14.2f} {t[2]:>16.2f} {t[1] / t[2]:>8.2f}x  {same}", flush=True)
        print(f"peer again: {ceiling():.2f}x; load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
