"""GPT-2 BPE throughput: gpt2kit vs raw tiktoken vs the pure-Python reference, and encode_batch scaling.

Same ids are asserted before any timing. Files: the shared English and Chinese corpora.

    python bench/tokenizer.py  (not tokenize.py: that name would shadow the stdlib module) [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, peak_rss_mb, table  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import tiktoken

    from gpt2kit.tokenization import get_tokenizer
    from gpt2kit.tokenization.gpt2 import _tiktoken_encoding
    from gpt2kit.tokenization.reference_bpe import ReferenceBPE

    ours = get_tokenizer("gpt2")
    enc = _tiktoken_encoding()  # raw tiktoken on the same ranks (get_encoding('gpt2') would download them)
    assert isinstance(enc, tiktoken.Encoding)
    rows = []
    for name in ("tinyshakespeare.txt", "zh/tang300.txt", "zh/song100.txt"):
        text = open(os.path.join(SHARED, name), encoding="utf-8").read()
        mb = len(text.encode()) / 1e6
        assert ours.encode(text) == enc.encode(text)
        ref = ReferenceBPE()
        t0 = time.perf_counter()
        assert ref.encode(text) == enc.encode(text)
        t_ref = time.perf_counter() - t0
        t = alternate({"gpt2kit": lambda: ours.encode(text), "tiktoken": lambda: enc.encode(text)}, repeat=args.repeat)
        rows.append([name, f"{mb:.2f}", f"{mb / t['gpt2kit']:.1f}", f"{mb / t['tiktoken']:.1f}", f"{mb / t_ref:.2f}",
                     f"{t['tiktoken'] / t['gpt2kit']:.2f}x"])
    print(table(rows, ["file", "MB", "gpt2kit MB/s", "tiktoken MB/s", "python ref MB/s", "gpt2kit/tiktoken"]))

    # encode_batch: the English corpus as 4,000 documents, 1 vs 2 threads
    text = open(os.path.join(SHARED, "tinyshakespeare.txt"), encoding="utf-8").read()
    docs = [text[i:i + 2000] for i in range(0, len(text), 2000)] * 4
    mb = sum(len(d.encode()) for d in docs) / 1e6
    assert ours.encode_batch(docs[:50], num_threads=2) == [enc.encode(d) for d in docs[:50]]
    t = alternate({1: lambda: ours.encode_batch(docs, num_threads=1), 2: lambda: ours.encode_batch(docs, num_threads=2)},
                  repeat=args.repeat)
    print()
    print(table([[f"{n} thread(s)", f"{mb / s:.1f}", f"{t[1] / s:.2f}x"] for n, s in t.items()],
                ["encode_batch", "MB/s", "vs 1 thread"]))
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
