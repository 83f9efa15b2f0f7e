"""argparse value types that reject bad flag values with a message naming the valid range."""
from __future__ import annotations

import argparse
import math


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


MAX_NEW_TOKENS = 1_000_000  # the history buffer is 8 bytes a token per row; 2e9 would ask for 16 GB
SEED_LIMIT = 2**64  # what torch.Generator and numpy's default_rng both accept


def max_new_tokens(s: str) -> int:
    v = positive_int(s)
    if v > MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"at most {MAX_NEW_TOKENS} tokens per sample, got {v}")
    return v


def seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2**64), got {s!r}") from None
    if not 0 <= v < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2**64), got {s}")
    return v


def port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is an integer in 0..65535 (0 = any free port), got {s!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"a port is an integer in 0..65535 (0 = any free port), got {v}")
    return v


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
