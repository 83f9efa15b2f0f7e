"""Autoregressive generation as a Python generator of token ids, on the engine every caller shares.

The engine knows only ids: tokenizers live one layer up (TextStreamer, generate_text).
One prompt yields ints; a batch (or num_samples > 1) yields one list per step with an id
for each row, or None for rows that already stopped.

Rows of different lengths sit at their own positions (no padding), so a row gives the same
tokens as its prompt run alone. Row i samples with row_generator(seed, i): the first row with a
seed gives what the server gives for that seed. Past the context window a row is predicted from
its last block_size tokens (nanoGPT's crop), as in every caller of the engine.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from .errors import GPT2KitError
from .inference.engine import Engine
from .inference.kv import BLOCK_LEN
from .inference.threads import restoring_threads
from .sampling import NO_FINITE_LOGIT, SamplingParams
from .sampling_params import NAN_LOGITS_MESSAGE, check_seed
from .streaming import TextStreamer, stream_text  # noqa: F401  (torch-free module, shared with numpy_gpt2)
from .tokenization.base import Tokenizer


def _check_prompts(prompts, vocab_size: int) -> list[list[int]]:
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise GPT2KitError("prompt must be a non-empty list of token ids (or a list of such lists)")
    batch = [list(p) for p in prompts] if isinstance(prompts[0], (list, tuple)) else [list(prompts)]
    for row in batch:
        if not row:
            raise GPT2KitError("a prompt is empty: give at least one token (e.g. the tokenizer's eot_token for unconditional samples)")
        for t in row:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size:
                raise GPT2KitError(f"prompt token {t!r} is not an id in 0..{vocab_size - 1}")
    return batch


@torch.inference_mode()
def generate(
    model,
    prompt: Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int = 50,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    stop_tokens: Iterable[int] = (),
) -> Iterator:
    """Yield new token ids. Rows stop at a stop token (which is yielded) or after max_new_tokens.

    generator: instead of seed, a torch.Generator the rows' seeds are drawn from.
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty, presence_penalty, frequency_penalty,
                            tuple(sorted((logit_bias or {}).items())))
    batch = _check_prompts(prompt, model.config.vocab_size)
    single = not isinstance(prompt[0], (list, tuple)) and num_samples == 1
    _check_positive(max_new_tokens=max_new_tokens, num_samples=num_samples)
    check_seed(seed)
    if generator is not None and seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    engine = _engine_for(model, batch, num_samples, max_new_tokens)
    was_training = model.training
    try:
        with restoring_threads():  # the engine's thread governor may lower the count while it runs
            rows = [engine.add(p, params, max_tokens=max_new_tokens, seed=seed, stop_ids=set(stop_tokens), index=i)
                    for i, p in enumerate(r for r in batch for _ in range(num_samples))]
            order = {id(r): i for i, r in enumerate(rows)}
            while engine.has_work:
                step: list[int | None] = [None] * len(rows)
                for out in engine.step():
                    if out.token == NO_FINITE_LOGIT:
                        raise GPT2KitError(NAN_LOGITS_MESSAGE)
                    if out.token is not None:
                        step[order[id(out.row)]] = out.token
                yield step[0] if single else step
    finally:
        model.train(was_training)


def _engine_for(model, batch: list[list[int]], num_samples: int, max_new_tokens: int) -> Engine:
    """An engine sized for this call: every row fits its longest window (no preemption), and any window, a prompt's
    or one slid past the context, is computed in one step, so every row yields one token per step."""
    T = model.config.block_size
    blocks = sum(-(-min(T, len(p) + max_new_tokens) // BLOCK_LEN) for p in batch) * num_samples
    B = len(batch) * num_samples
    return Engine(model, kv_blocks=1 + max(blocks, -(-T // BLOCK_LEN)), max_rows=B, max_step_tokens=B * T)


def _check_positive(**counts) -> None:
    for name, v in counts.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise GPT2KitError(f"{name} must be a positive integer, got {v!r}")


def generate_text(
    model,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    max_new_tokens: int = 50,
    *,
    stop: Sequence[str] = (),
    allow_special: bool = False,
    **kwargs,
) -> Iterator[str]:
    """Stream the continuation of one prompt as text; ends at EOT, a stop string or the length."""
    ids = prompt if not isinstance(prompt, str) else tokenizer.encode(prompt, allowed_special="all" if allow_special else "none_raise")
    if not ids:
        if tokenizer.eot_token is None:
            raise GPT2KitError("the prompt is empty and this tokenizer has no end-of-text token to start from; give a prompt")
        ids = [tokenizer.eot_token]
    eot = tokenizer.eot_token
    gen = generate(model, ids, max_new_tokens, stop_tokens=() if eot is None else (eot,), **kwargs)
    try:
        yield from stream_text(gen, tokenizer, stop, prev=ids[-1])
    finally:
        gen.close()
