"""Autoregressive generation as a Python generator of token ids.

The engine knows only ids: tokenizers live one layer up (TextStreamer, generate_text).
One prompt yields ints; a batch (or num_samples > 1) yields one list per step with an id
for each row, or None for rows that already stopped.

Batched prompts are left-padded: pad keys are masked and each row's positions start at 0
at its first real token, so a row gives the same tokens as its prompt run alone.
Past the context window the model re-runs the last block_size tokens (nanoGPT's crop),
so no position >= n_ctx is ever used.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from .errors import GPT2KitError
from .sampling import NO_FINITE_LOGIT, SamplingParams, sample
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
    seed: int | None = None,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    stop_tokens: Iterable[int] = (),
) -> Iterator:
    """Yield new token ids. Rows stop at a stop token (which is yielded) or after max_new_tokens."""
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    cfg = model.config
    batch = _check_prompts(prompt, cfg.vocab_size)
    single = not isinstance(prompt[0], (list, tuple)) and num_samples == 1
    _check_positive(max_new_tokens=max_new_tokens, num_samples=num_samples)
    check_seed(seed)
    device = model.transformer.wte.weight.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)

    rows = [p[-cfg.block_size:] for p in batch for _ in range(num_samples)]  # crop over-long prompts
    hist, pad = _left_padded(rows, max_new_tokens, device)  # (B, L + max_new_tokens), (B,)
    B, L = len(rows), hist.shape[1] - max_new_tokens
    n = L  # filled length of hist
    padded = bool(pad.any())
    seen = _seen_mask(rows, cfg.vocab_size, device) if repetition_penalty != 1.0 else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = model.new_cache(B, min(cfg.block_size, L + max_new_tokens))

    was_training = model.training
    model.eval()
    try:
        logits = _prefill(model, cache, hist, n, pad, padded)
        for _ in range(max_new_tokens):
            nxt = sample(logits[:, -1, :], params, generator, seen)  # (B,)
            if bool((nxt == NO_FINITE_LOGIT).any()):
                raise GPT2KitError(NAN_LOGITS_MESSAGE)
            if seen is not None:
                seen[torch.arange(B, device=device), nxt] = True
            hist[:, n] = nxt
            n += 1
            # a row that already stopped yields None; the step that stops it yields its stop token
            yield int(nxt[0]) if single else [None if d else t for t, d in zip(nxt.tolist(), done.tolist())]
            if stop.numel():
                done |= torch.isin(nxt, stop)
                if bool(done.all()):
                    return
            if n == L + max_new_tokens:
                return
            if cache.pos == cache.max_len:  # window full: re-run the last block_size tokens
                logits = _prefill(model, cache, hist, n, pad, padded)
            else:
                positions = (cache.pos - pad)[:, None] if padded else None  # (B, 1)
                logits, _ = model(nxt[:, None], cache=cache, positions=positions)  # (B, 1, V)
    finally:
        model.train(was_training)


def _check_positive(**counts) -> None:
    for name, v in counts.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise GPT2KitError(f"{name} must be a positive integer, got {v!r}")


def _left_padded(rows: list[list[int]], max_new_tokens: int, device):
    """The history buffer (B, L + max_new_tokens), prompts right-aligned at L, and each row's pad (B,)."""
    B, L = len(rows), max(len(r) for r in rows)
    hist = torch.zeros(B, L + max_new_tokens, dtype=torch.long, device=device)  # (B, L + max_new_tokens)
    for b, r in enumerate(rows):
        hist[b, L - len(r) : L] = torch.tensor(r, dtype=torch.long)
    return hist, torch.tensor([L - len(r) for r in rows], device=device)  # (B,)


def _seen_mask(rows: list[list[int]], vocab_size: int, device):
    """(B, V) bool: the ids already in each row's context (for the repetition penalty)."""
    seen = torch.zeros(len(rows), vocab_size, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        seen[b, r] = True
    return seen


def _prefill(model, cache, hist, n: int, pad, padded: bool):
    """Reset the cache and run the last min(n, cache.max_len) tokens of hist[:, :n]."""
    W = min(n, cache.max_len)
    window = hist[:, n - W : n]  # (B, W)
    cache.reset()
    positions = None
    if padded:
        pad_w = (pad - (n - W)).clamp(min=0)  # (B,) pads still inside the window
        ar = torch.arange(W, device=hist.device)
        positions = (ar[None, :] - pad_w[:, None]).clamp(min=0)  # (B, W)
        key_mask = torch.ones(hist.size(0), cache.max_len, dtype=torch.bool, device=hist.device)
        key_mask[:, :W] = ar[None, :] >= pad_w[:, None]
        cache.key_mask = key_mask
    logits, _ = model(window, cache=cache, positions=positions, last_only=True)
    return logits  # (B, 1, V)


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
