"""Synthetic chat data: arithmetic questions and answers in OpenAI's messages format, deterministic by seed.

A question is an (a, b, wording) triple, e.g. "What is 3 + 5?"; its answer is "3 + 5 = 8.". A fixed
tenth of all questions (chosen by HELD_OUT_SEED, whatever the seed) is held out: conversations()
never asks them, held_out() lists them, so a model trained on the former can be scored on the latter.
A conversation has 1 or 2 question turns, and now and then a system message.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import GPT2KitError
from ..fileio import atomic_path

WORDINGS = ("What is {a} + {b}?", "What's {a} plus {b}?", "Compute {a} + {b}.", "Add {a} and {b}.")
SYSTEM = "You are a calculator."
HELD_OUT_SEED = 20260 + 1127
MAX_TURNS = 2


def questions(max_operand: int) -> list[tuple[int, int, int]]:
    """Every (a, b, wording index) with 0 <= a, b <= max_operand."""
    if not isinstance(max_operand, int) or max_operand < 1:
        raise GPT2KitError(f"max_operand must be a positive integer, got {max_operand!r}")
    n = max_operand + 1
    return [(a, b, w) for a in range(n) for b in range(n) for w in range(len(WORDINGS))]


def split(max_operand: int) -> tuple[list, list]:
    """(train questions, held-out questions): a tenth held out, the same for every seed."""
    qs = questions(max_operand)
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(qs))
    k = max(1, len(qs) // 10)
    return [qs[i] for i in sorted(order[k:])], [qs[i] for i in sorted(order[:k])]


def ask(q: tuple[int, int, int]) -> str:
    a, b, w = q
    return WORDINGS[w].format(a=a, b=b)


def answer(q: tuple[int, int, int]) -> str:
    a, b, _ = q
    return f"{a} + {b} = {a + b}."


def conversations(n: int, seed: int = 0, max_operand: int = 9) -> list[dict]:
    """n conversations of train questions, {"messages": [...]} each, the same for the same arguments."""
    if not isinstance(n, int) or n < 1:
        raise GPT2KitError(f"n must be a positive integer, got {n!r}")
    train, _ = split(max_operand)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.2 else []
        for _ in range(int(rng.integers(1, MAX_TURNS + 1))):
            q = train[int(rng.integers(len(train)))]
            msgs += [{"role": "user", "content": ask(q)}, {"role": "assistant", "content": answer(q)}]
        out.append({"messages": msgs})
    return out


def held_out(max_operand: int = 9) -> list[tuple[str, str]]:
    """(question, expected answer) for every held-out question."""
    return [(ask(q), answer(q)) for q in split(max_operand)[1]]


def write_jsonl(path: str, convs: list[dict]) -> None:
    """One {"messages": [...]} object a line, written atomically (parent directories made as needed)."""
    from ..fileio import write_failure

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _write(path, convs)
    except OSError as e:
        why = write_failure(e)
        if why is None:
            raise
        raise GPT2KitError(f"cannot write {path}: {why}; choose another path or free space") from None


def _write(path: str, convs: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(c) + "\n" for c in convs)
