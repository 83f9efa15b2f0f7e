"""argparse value types that reject bad flag values with a message naming the valid range."""
from __future__ import annotations

import argparse
import math


MAX_NEW_TOKENS = 1_000_000  # the history buffer is 8 bytes a token per row; 2e9 would ask for 16 GB
SEED_LIMIT = 2**64  # what torch.Generator and numpy's default_rng both accept


def _int_in(s: str, lo: int, hi: int | None, what: str) -> int:
    """int(s) with lo <= value <= hi (hi None: no upper bound), else an error saying `what` is expected."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(s: str) -> int:
    return _int_in(s, 1, None, "a positive integer")


def nonneg_int(s: str) -> int:
    return _int_in(s, 0, None, "an integer >= 0")


def max_new_tokens(s: str) -> int:
    return _int_in(s, 1, MAX_NEW_TOKENS, f"a positive integer, at most {MAX_NEW_TOKENS} tokens per sample")


def seed(s: str) -> int:
    return _int_in(s, 0, SEED_LIMIT - 1, "a seed: an integer in [0, 2**64)")


def port(s: str) -> int:
    return _int_in(s, 0, 65535, "a port in 0..65535 (0 = any free port)")


def stop_string(s: str) -> str:
    if not s:
        raise argparse.ArgumentTypeError("a stop string must not be empty (it would match before the first token)")
    return s


def temperature(s: str) -> float:
    v = _float(s)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"temperature must be a finite number >= 0 (0 = greedy), got {s}")
    return v


def top_k(s: str) -> int | None:
    if s.lower() in ("none", "off"):
        return None
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"top-k must be a positive integer or 'none', got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"top-k must be a positive integer or 'none' (no limit), got {v}")
    return v


def top_p(s: str) -> float:
    v = _float(s)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1] (1 = off), got {s}")
    return v


def positive_float(s: str) -> float:
    v = _float(s)
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s}")
    return v


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError("expected a number, got NaN")
    return v
