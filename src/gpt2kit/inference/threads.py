"""How many CPU threads a decode step uses, given what else runs on the machine.

torch's CPU kernels split each matmul over an OpenMP team, whose threads spin while they wait
for the next one. When another busy process holds a core, the team member that shares its core
is descheduled for whole time slices while the others spin at the barrier: on 2 cores one
CPU-bound neighbour makes a 2-thread decode 3-5x slower, when 1 thread would lose about a third.
A fixed answer is wrong one way or the other (OMP_WAIT_POLICY=PASSIVE halves the quiet speed
here instead), so the engine asks the kernel: every `interval` seconds it reads how much CPU
time the whole machine used (/proc/stat) beside this process's own (/proc/self/stat), and uses
the cores the others leave free, never more than the thread count it started with.
Linux only; elsewhere the thread count is left alone. GPT2KIT_ADAPT_THREADS=0 turns it off.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy() -> float | None:
    """Seconds of CPU time all processes have used (every core summed), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_busy() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    def __init__(self, interval: float = 0.5, max_threads: int | None = None):
        self.interval = interval
        self.max_threads = max_threads or torch.get_num_threads()
        self.cores = os.cpu_count() or 1
        self._last = self._sample()
        self._last_tick, self._window = self._last[0], interval
        self.changes = 0

    def _sample(self):
        return time.monotonic(), _machine_busy(), _own_busy()

    def others(self) -> float | None:
        """Cores' worth of CPU time used by other processes since the last sample (None: unknown)."""
        now = self._sample()
        (t0, m0, o0), (t1, m1, o1) = self._last, now
        self._last = now
        if m0 is None or m1 is None or t1 <= t0:
            return None
        return max(0.0, ((m1 - m0) - (o1 - o0)) / (t1 - t0))

    def tick(self) -> None:
        """Call once per step; adjusts torch's thread count at most every `interval` seconds, from the window
        since the last adjustment. A gap between steps longer than `interval` (the engine sat idle) starts a
        new window: what others ran meanwhile says nothing about now, and counting it made the first half
        second of every request after a busy pause run on one thread."""
        now = time.monotonic()
        idle, self._last_tick = now - self._last_tick > self.interval, now
        if self.max_threads < 2:
            return
        if idle:  # the first window after a pause is short, so a neighbour that is still there is left its core soon
            self._last, self._window = self._sample(), self.interval / 4
            return
        if now - self._last[0] < self._window:
            return
        self._window = self.interval
        others = self.others()
        if others is None:
            return
        busy = int(others + 0.6)  # a neighbour holding 0.4 of a core or more is one core less for us
        want = max(1, min(self.max_threads, self.cores - busy))
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            self.changes += 1


_governor: ThreadGovernor | None = None


def governor() -> ThreadGovernor | None:
    """The process's one governor (every engine shares it: they share torch's thread pool);
    None when GPT2KIT_ADAPT_THREADS=0 asks for torch's thread count as it is."""
    global _governor
    if os.environ.get("GPT2KIT_ADAPT_THREADS", "1") == "0":
        return None
    if _governor is None:
        _governor = ThreadGovernor()
    return _governor


@contextmanager
def restoring_threads():
    """Give torch back the thread count it had (a generate() or eval call between training steps leaves none changed)."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


@contextmanager
def one_torch_thread(active: bool = True):
    """torch ops on one thread for a block (when active), then torch's thread count as it was.

    Between two C decode steps (native.py) the engine samples with a few small torch ops. On more
    than one thread each of them wakes torch's OpenMP team, whose threads then spin for a while
    on the cores the C step's own threads need: on 2 cores that halved the int8 decode rate.
    """
    n = torch.get_num_threads()
    if not active or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
