"""argparse value types that reject bad flag values with a message naming the valid range.

Sampling values are checked by the library's own checks (sampling_params, streaming), so a flag
and the Python API refuse the same values with the same words."""
from __future__ import annotations

import argparse
import math

from ..errors import GPT2KitError
from ..sampling_params import check_seed, check_temperature, check_top_k, check_top_p


MAX_NEW_TOKENS = 1_000_000  # the history buffer is 8 bytes a token per row; 2e9 would ask for 16 GB


def _int_in(s: str, lo: int | None, hi: int | None, what: str) -> int:
    """int(s) with lo <= value <= hi (None: no bound), else an error saying `what` is expected."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(s: str) -> int:
    return _int_in(s, 1, None, "a positive integer")


def nonneg_int(s: str) -> int:
    return _int_in(s, 0, None, "an integer >= 0")


def max_new_tokens(s: str) -> int:
    return _int_in(s, 1, MAX_NEW_TOKENS, f"a positive integer, at most {MAX_NEW_TOKENS} tokens per sample")


def _checked(check, value):
    try:
        check(value)
    except GPT2KitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def seed(s: str) -> int:
    return _checked(check_seed, _int_in(s, None, None, "an integer seed"))


def port(s: str) -> int:
    return _int_in(s, 0, 65535, "a port in 0..65535 (0 = any free port)")


def stop_string(s: str) -> str:
    from ..streaming import StopStrings

    return _checked(lambda v: StopStrings([v]), s)


def temperature(s: str) -> float:
    return _checked(check_temperature, _float(s))


def top_k(s: str) -> int | None:
    if s.lower() in ("none", "off"):
        return None
    return _checked(check_top_k, _int_in(s, None, None, "a positive integer or 'none'"))


def top_p(s: str) -> float:
    return _checked(check_top_p, _float(s))


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
