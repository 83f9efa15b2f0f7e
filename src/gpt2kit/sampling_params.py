"""Sampling settings and their validation, torch-free: the torch sampler, numpy_gpt2 and the server share it.

Limits keep the arithmetic meaningful: a temperature below MIN_TEMPERATURE or a repetition
penalty outside [MIN_PENALTY, MAX_PENALTY] divides logits into overflow (NaN probabilities)
without changing what a user could want (use temperature 0 for greedy). Seeds are the
integers a 64-bit generator takes, the same for torch and NumPy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import GPT2KitError

MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy in all but rounding: ask for 0
MIN_PENALTY, MAX_PENALTY = 1e-3, 1e3
MAX_ADDITIVE_PENALTY = 2.0  # OpenAI's range for presence and frequency penalties: [-2, 2]
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value: [-100, 100]
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's cap on the number of biased tokens
SEED_LIMIT = 2**64
NAN_LOGITS_MESSAGE = "the model produced no finite logits (NaN or inf): its weights are likely corrupt"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_temperature(t) -> None:
    if not _num(t) or t < 0:
        raise GPT2KitError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
    if 0 < t < MIN_TEMPERATURE:
        raise GPT2KitError(f"temperature {t!r} is below {MIN_TEMPERATURE:g}, where sampling is numerically greedy; use 0 for greedy")


def check_top_k(k) -> None:
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k <= 0):
        raise GPT2KitError(f"top_k must be a positive integer (or None for no limit), got {k!r}")


def check_top_p(p) -> None:
    if p is not None and (not _num(p) or not 0.0 < p <= 1.0):
        raise GPT2KitError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {p!r}")


def check_repetition_penalty(r) -> None:
    if not _num(r) or not MIN_PENALTY <= r <= MAX_PENALTY:
        raise GPT2KitError(f"repetition_penalty must be a number in [{MIN_PENALTY:g}, {MAX_PENALTY:g}] (1 = off), got {r!r}")


def check_additive_penalty(name: str, v) -> None:
    """presence_penalty / frequency_penalty: OpenAI's additive penalties on tokens already generated."""
    if not _num(v) or not -MAX_ADDITIVE_PENALTY <= v <= MAX_ADDITIVE_PENALTY:
        raise GPT2KitError(f"{name} must be a number in [-{MAX_ADDITIVE_PENALTY:g}, {MAX_ADDITIVE_PENALTY:g}] (0 = off), got {v!r}")


def check_logit_bias(bias) -> None:
    """logit_bias: pairs (token id, bias in [-100, 100]) added to the logits before sampling; ids are checked against
    the vocabulary where it is known (the engine)."""
    if not isinstance(bias, tuple) or len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise GPT2KitError(f"logit_bias must be at most {MAX_LOGIT_BIAS_ENTRIES} (token id, bias) pairs")
    for pair in bias:
        ok = isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], int) and not isinstance(pair[0], bool)
        if not ok or pair[0] < 0 or not _num(pair[1]) or not -MAX_LOGIT_BIAS <= pair[1] <= MAX_LOGIT_BIAS:
            raise GPT2KitError(f"logit_bias entries must map a token id >= 0 to a number in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {pair!r}")


def check_seed(seed) -> int | None:
    """A seed is None (fresh randomness) or an integer in [0, 2**64)."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT):
        raise GPT2KitError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return seed


def check_sampling(temperature, top_k=None, top_p=None, repetition_penalty=1.0) -> None:
    check_temperature(temperature)
    check_top_k(top_k)
    check_top_p(top_p)
    check_repetition_penalty(repetition_penalty)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int | None = None  # keep the k most likely; None = all (clamped to the vocab)
    top_p: float | None = None  # nucleus: smallest set with mass >= top_p; None or 1.0 = all
    repetition_penalty: float = 1.0  # CTRL / HF: divide positive logits (multiply negative) of seen ids (prompt and output)
    presence_penalty: float = 0.0  # OpenAI: subtract once from the logit of every id already generated
    frequency_penalty: float = 0.0  # OpenAI: subtract per occurrence in the generated text
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI: (token id, bias) added to the logits

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        check_additive_penalty("presence_penalty", self.presence_penalty)
        check_additive_penalty("frequency_penalty", self.frequency_penalty)
        check_logit_bias(self.logit_bias)

    @property
    def penalized(self) -> bool:
        """Whether the logits depend on the row's history (penalties), not on the model alone."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def filters(self) -> "SamplingParams":
        """The settings that act on a whole batch of already-adjusted logits (what rows can be grouped by)."""
        return SamplingParams(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
