"""Shared helpers for the benchmark scripts: timing with alternation, medians, tables, RSS."""
from __future__ import annotations

import resource
import statistics
import sys
import time


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timeit(fn, repeat: int = 3, warmup: int = 1, stat=statistics.median) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return stat(times)


def alternate(fns: dict, repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median seconds per function, running them round-robin so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows: list[list], header: list[str]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cols[1:]])


def machine() -> str:
    import platform

    import torch

    return f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, cpu capability {torch.backends.cpu.get_cpu_capability()}"
