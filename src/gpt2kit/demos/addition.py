"""A GPT that learns to add, after minGPT's play_math / adder.

A problem a + b with n-digit operands is one sequence of 3n + 1 digit tokens: the digits of
a, the digits of b, then the n + 1 digits of the sum *reversed* (least significant first,
the order in which carries are worked out). 85 + 50 = 135 with n = 2 is 8 5 5 0 5 3 1.
The model reads the first 2n digits and writes the sum; the loss covers only the sum
positions (the other targets are -1, which cross_entropy ignores).

Problems are drawn on the fly. A fixed set of pairs is held out before training and never
drawn for training; accuracy is exact match of the whole sum on those held-out pairs,
decoded greedily with gpt2kit.generate.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..config import GPTConfig
from ..errors import GPT2KitError
from ..generation import generate
from ..model import GPT

MAX_DIGITS = 6


def n_problems(digits: int) -> int:
    return 10 ** (2 * digits)  # every (a, b) with 0 <= a, b < 10**digits


def problem(index: int, digits: int) -> tuple[int, int]:
    """Problem number index -> (a, b)."""
    return divmod(int(index), 10**digits)


def encode(a: int, b: int, digits: int) -> list[int]:
    """(a, b) -> the 3n + 1 tokens: a's digits, b's digits, the sum's n + 1 digits reversed."""
    return [int(c) for c in f"{a:0{digits}d}{b:0{digits}d}" + f"{a + b:0{digits + 1}d}"[::-1]]


def decode_sum(tokens) -> int:
    """The model's n + 1 output digits (least significant first) -> the number."""
    return int("".join(str(int(t)) for t in tokens)[::-1])


def batch(indices: np.ndarray, digits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Problems -> (x, y), each (B, 3n): y is x shifted by one, with -1 where no sum digit is predicted."""
    seqs = torch.tensor([encode(*problem(i, digits), digits) for i in indices])  # (B, 3n + 1)
    x, y = seqs[:, :-1], seqs[:, 1:].clone()  # (B, 3n)
    y[:, : 2 * digits - 1] = -1  # predictions made while still reading a and b: not trained on
    return x, y


class Split:
    """Disjoint train/test problems: test is a fixed random set; training draws avoid it."""

    def __init__(self, digits: int, n_test: int, seed: int):
        total = n_problems(digits)
        if not 0 < n_test < total:
            raise GPT2KitError(f"the held-out set must hold 1..{total - 1} of the {total} {digits}-digit problems, got {n_test}")
        self.digits, self.total = digits, total
        self.rng = np.random.default_rng(seed)
        self.test = np.sort(self.rng.choice(total, n_test, replace=False))  # (n_test,)

    def is_test(self, indices: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.test, indices).clip(max=len(self.test) - 1)
        return self.test[pos] == indices

    def train_batch(self, size: int) -> np.ndarray:
        """size random training problems, none of them held out (rejection sampling)."""
        out = np.empty(0, dtype=np.int64)
        while len(out) < size:
            draw = self.rng.integers(0, self.total, 2 * size)
            out = np.concatenate([out, draw[~self.is_test(draw)]])
        return out[:size]


def model_config(digits: int) -> GPTConfig:
    # minGPT's gpt-nano; the context holds the 3n tokens the model ever reads
    return GPTConfig(block_size=3 * digits, vocab_size=10, n_layer=3, n_head=3, n_embd=48)


def lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    """Linear warmup, then cosine decay to lr / 10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr / 10 + 0.5 * (lr - lr / 10) * (1 + math.cos(math.pi * min(t, 1.0)))


def train(model: GPT, split: Split, steps: int, batch_size: int = 256, lr: float = 3e-3, max_seconds: float | None = None,
          log=print, log_every: int = 250) -> dict:
    """AdamW on freshly drawn training problems; stops after steps or max_seconds."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # matrices decay; biases and LN gains do not
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    model.train()
    t0, step, loss = time.perf_counter(), 0, float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        x, y = batch(split.train_batch(batch_size), split.digits)
        _, loss_t = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = loss_t.item()
        elapsed = time.perf_counter() - t0
        if log and (step + 1) % log_every == 0:
            log(f"step {step + 1:5d}  loss {loss:.4f}  {elapsed:6.1f}s")
        if max_seconds is not None and elapsed > max_seconds:
            if log:
                log(f"time budget of {max_seconds:.0f}s reached at step {step + 1}")
            break
    model.eval()
    return {"steps": step + 1, "seconds": time.perf_counter() - t0, "loss": loss}


def solve(model: GPT, indices: np.ndarray, digits: int, batch_size: int = 1000) -> np.ndarray:
    """The model's sums for these problems, decoded greedily: (N,) int64."""
    out = []
    for i in range(0, len(indices), batch_size):
        prompts = [encode(*problem(j, digits), digits)[: 2 * digits] for j in indices[i : i + batch_size]]
        steps = list(generate(model, prompts, digits + 1, temperature=0.0))  # n + 1 lists of B ids
        out += [decode_sum(col) for col in zip(*steps)]
    return np.array(out, dtype=np.int64)


def accuracy(model: GPT, indices: np.ndarray, digits: int) -> tuple[float, np.ndarray]:
    """Exact-match rate of the whole sum, and the model's answers."""
    got = solve(model, indices, digits)
    want = np.array([a + b for a, b in (problem(i, digits) for i in indices)])
    return float(np.mean(got == want)), got


def main(digits: int = 2, steps: int = 1500, batch_size: int = 256, lr: float = 3e-3, test_size: int | None = None,
         max_seconds: float = 300.0, seed: int = 1337, examples: int = 6, threads: int | None = 1) -> dict:
    if not isinstance(digits, int) or not 1 <= digits <= MAX_DIGITS:
        raise GPT2KitError(f"digits= must be in 1..{MAX_DIGITS}, got {digits!r}")
    if threads:
        torch.set_num_threads(threads)  # a 85k-parameter model: syncing threads costs more than they add
    n_test = test_size if test_size is not None else min(1000, n_problems(digits) // 10)
    split = Split(digits, n_test, seed)
    torch.manual_seed(seed)
    model = GPT(model_config(digits))
    print(f"addition: {digits}-digit a + b, {n_problems(digits)} problems, {n_test} held out, the rest drawn on the fly; "
          f"GPT {model.config.n_layer}x{model.config.n_embd} ({model.num_params() / 1e3:.0f}k params), "
          f"{steps} steps of {batch_size}, at most {max_seconds:.0f}s, torch threads: {torch.get_num_threads()}")
    run = train(model, split, steps, batch_size, lr, max_seconds)
    acc, got = accuracy(model, split.test, digits)
    n_ok = int(round(acc * n_test))
    print(f"trained {run['steps']} steps in {run['seconds']:.1f}s; held-out exact match: {n_ok}/{n_test} = {100 * acc:.2f}%")
    wrong = [i for i, (j, g) in enumerate(zip(split.test, got)) if sum(problem(j, digits)) != g]
    shown = np.random.default_rng(seed).permutation(n_test)[: max(0, examples - min(3, len(wrong)))].tolist()
    show = list(dict.fromkeys(shown + wrong[:3]))  # a few random held-out problems, and up to 3 misses
    for k in show:
        a, b = problem(split.test[k], digits)
        toks = encode(a, b, digits)
        mark = "ok" if got[k] == a + b else f"WRONG (true {a + b})"
        print(f"  {a:>{digits}d} + {b:>{digits}d} = {got[k]:<{digits + 1}d}  tokens {''.join(map(str, toks[: 2 * digits]))} -> "
              f"{''.join(reversed(f'{got[k]:0{digits + 1}d}'))}  {mark}")
    return {"accuracy": acc, **run, "n_test": n_test}
