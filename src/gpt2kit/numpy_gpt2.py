"""GPT-2 in NumPy, in the style of picoGPT: read it top to bottom, then run it.

    python -m gpt2kit.numpy_gpt2 "Alan Turing theorized that computers would one day become" --n-tokens 40 --model gpt2

The forward pass is a handful of small functions over a dict of arrays (picoGPT's layout):

    params = {"wte": (V, C), "wpe": (n_ctx, C), "ln_f": {"g", "b"},
              "blocks": [{"ln_1": {"g", "b"}, "attn": {"c_attn": {"w", "b"}, "c_proj": {"w", "b"}},
                          "ln_2": {"g", "b"}, "mlp": {"c_fc": {"w", "b"}, "c_proj": {"w", "b"}}}, ...]}

Every weight matrix is (in, out), so a linear layer is `x @ w + b`; a bias is None in models
trained without biases. Beyond picoGPT: a preallocated KV cache (each new token attends over
the cached keys instead of re-running the prefix), temperature / top-k / top-p sampling, and
loading of gpt2kit checkpoints and HF GPT-2 directories. No torch anywhere: weights come
from safetensors straight into NumPy.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from .checkpoint import TRANSPOSED, gpt2kit_key, read_model_dir, read_safetensors
from .config import GPTConfig
from .errors import GPT2KitError
from .hub import resolve_model_path
from .sampling_params import NAN_LOGITS_MESSAGE, check_sampling, check_seed

GELU_C = math.sqrt(2 / math.pi)  # a Python float, so float32 arrays stay float32


# -- the forward pass -------------------------------------------------------------------------

def gelu(x):
    return 0.5 * x * (1 + np.tanh(GELU_C * (x + 0.044715 * x * x * x)))  # GPT-2's tanh approximation (x**3 on float32 is ~80x slower)


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))  # subtract the max: exp never overflows
    return e / np.sum(e, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps: float = 1e-5):
    x = x - np.mean(x, axis=-1, keepdims=True)  # (T, C) zero mean per position
    var = np.mean(x * x, axis=-1, keepdims=True)  # (T, 1)
    x = x / np.sqrt(var + eps)  # (T, C) unit variance per position
    return g * x if b is None else g * x + b  # (T, C)


def linear(x, w, b):
    return x @ w if b is None else x @ w + b  # (T, in) @ (in, out) -> (T, out)


def ffn(x, c_fc, c_proj):
    return linear(gelu(linear(x, **c_fc)), **c_proj)  # (T, C) -> (T, 4C) -> (T, C)


def causal_mask(T: int, S: int):
    """(T, S) additive mask: query i sits at position S - T + i and sees keys 0..S - T + i."""
    return (1 - np.tri(T, S, k=S - T, dtype=np.float32)) * -1e10  # (T, S)


def attention(q, k, v, mask):
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1]) + mask  # (nh, T, hs) @ (nh, hs, S) -> (nh, T, S)
    return softmax(scores) @ v  # (nh, T, S) @ (nh, S, hs) -> (nh, T, hs)


def mha(x, c_attn, c_proj, n_head: int, kv=None, pos: int = 0):
    """Multi-head causal self-attention. kv = (k_cache, v_cache), each (nh, max_len, hs), or None."""
    T, C = x.shape
    qkv = linear(x, **c_attn)  # (T, 3C)
    q, k, v = (a.reshape(T, n_head, C // n_head).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))  # 3 x (nh, T, hs)
    if kv is not None:
        k_cache, v_cache = kv
        k_cache[:, pos : pos + T] = k  # write this step's keys in place: nothing is concatenated
        v_cache[:, pos : pos + T] = v
        k, v = k_cache[:, : pos + T], v_cache[:, : pos + T]  # (nh, S, hs), S = pos + T
    out = attention(q, k, v, causal_mask(T, k.shape[1]))  # (nh, T, hs)
    return linear(out.transpose(1, 0, 2).reshape(T, C), **c_proj)  # (T, nh, hs) -> (T, C) -> (T, C)


def transformer_block(x, ln_1, attn, ln_2, mlp, n_head: int, eps: float, kv=None, pos: int = 0):
    x = x + mha(layer_norm(x, **ln_1, eps=eps), **attn, n_head=n_head, kv=kv, pos=pos)  # (T, C) pre-LN residual
    x = x + ffn(layer_norm(x, **ln_2, eps=eps), **mlp)  # (T, C)
    return x


class KVCache:
    """Keys and values of every layer, allocated once: k, v are (n_layer, nh, max_len, hs)."""

    def __init__(self, config: GPTConfig, max_len: int, dtype=np.float32):
        if not 0 < max_len <= config.block_size:
            raise GPT2KitError(f"KV cache length must be in 1..{config.block_size} (the model context), got {max_len}")
        shape = (config.n_layer, config.n_head, max_len, config.head_size)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.pos = 0  # positions filled so far

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def gpt2(ids, params: dict, config: GPTConfig, cache: KVCache | None = None, last_only: bool = False):
    """Token ids (T,) -> logits (T, V), or (1, V) with last_only. With a cache, ids continue at cache.pos."""
    pos = cache.pos if cache is not None else 0
    T = len(ids)
    if pos + T > (cache.max_len if cache is not None else config.block_size):
        raise GPT2KitError(f"sequence of {pos + T} tokens exceeds the context ({cache.max_len if cache else config.block_size})")
    x = params["wte"][ids] + params["wpe"][pos : pos + T]  # (T, C) token + position embeddings
    for i, block in enumerate(params["blocks"]):
        kv = (cache.k[i], cache.v[i]) if cache is not None else None  # (nh, max_len, hs) views
        x = transformer_block(x, **block, n_head=config.n_head, eps=config.layer_norm_epsilon, kv=kv, pos=pos)  # (T, C)
    if cache is not None:
        cache.pos = pos + T
    x = layer_norm(x, **params["ln_f"], eps=config.layer_norm_epsilon)  # (T, C)
    if last_only:
        x = x[-1:]  # (1, C): decoding needs only the next-token logits
    return x @ params["wte"].T  # (T, C) @ (C, V) -> (T, V): the head is tied to the token embedding


# -- sampling ----------------------------------------------------------------------------------

def next_token_probs(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Logits (V,) -> the distribution sampled from (V,) float64, after temperature, top-k and top-p."""
    logits = np.asarray(logits, dtype=np.float64) / temperature  # float64: the cumsum over 50k probs stays exact
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k)[V - top_k]  # the k-th largest logit
        logits = np.where(logits < kth, -np.inf, logits)  # (V,) ties with the k-th stay, as in torch.topk filtering
    probs = softmax(logits)  # (V,)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")  # (V,) most likely first
        mass_before = np.cumsum(probs[order]) - probs[order]  # (V,) mass of strictly more likely tokens
        probs[order[mass_before >= top_p]] = 0.0  # the most likely token always stays (mass_before = 0)
        probs /= probs.sum()
    return probs


def sample(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           repetition_penalty: float = 1.0, seen=None) -> int:
    """Pick one id from logits (V,); temperature 0 is greedy. seen (V,) bool marks ids already in the context.
    Total, as the torch sampler: NaN/inf logits are never drawn, and a row with none finite is an error."""
    finite = np.isfinite(logits)  # (V,)
    if not finite.all():
        if not finite.any():
            raise GPT2KitError(NAN_LOGITS_MESSAGE)
        logits = np.where(finite, logits, -np.inf)  # (V,)
    if seen is not None and repetition_penalty != 1.0:
        logits = np.where(seen, np.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty), logits)  # CTRL's penalty
    if temperature == 0:
        return int(np.argmax(logits))
    probs = next_token_probs(logits, temperature, top_k, top_p)  # (V,)
    return int(rng.choice(probs.shape[0], p=probs))


# -- generation --------------------------------------------------------------------------------

def generate(model: "NumpyGPT2", ids: Sequence[int], n_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float = 1.0, rng: np.random.Generator | None = None,
             seed: int | None = None, stop_tokens: Iterable[int] = ()) -> Iterator[int]:
    """Yield up to n_tokens new ids after the prompt ids; a stop token is yielded, then generation ends.

    Past the context window the last block_size tokens are re-run (nanoGPT's crop), exactly as
    gpt2kit.generate does, so both engines give the same tokens.
    """
    params, config = model
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    check_seed(seed)
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise GPT2KitError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    ids = list(ids)
    if not ids:
        raise GPT2KitError("the prompt is empty: give at least one token (e.g. the tokenizer's eot_token)")
    if any(not isinstance(t, (int, np.integer)) or not 0 <= t < config.vocab_size for t in ids):
        raise GPT2KitError(f"prompt ids must be integers in 0..{config.vocab_size - 1}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    stop = set(stop_tokens)
    history = ids[-config.block_size :]  # crop an over-long prompt
    seen = None
    if repetition_penalty != 1.0:
        seen = np.zeros(config.vocab_size, dtype=bool)
        seen[history] = True
    cache = KVCache(config, min(config.block_size, len(history) + n_tokens))
    logits = gpt2(np.array(history), params, config, cache, last_only=True)[-1]  # (V,) prefill the prompt
    for step in range(n_tokens):
        nxt = sample(logits, rng, temperature, top_k, top_p, repetition_penalty, seen)
        yield nxt
        if nxt in stop or step == n_tokens - 1:
            return
        history.append(nxt)
        if seen is not None:
            seen[nxt] = True
        if cache.pos == cache.max_len:  # window full: start over on the last max_len tokens
            cache.pos = 0
            logits = gpt2(np.array(history[-cache.max_len :]), params, config, cache, last_only=True)[-1]  # (V,)
        else:
            logits = gpt2(np.array([nxt]), params, config, cache)[-1]  # (V,) one new token over the cache


def generate_text(model: "NumpyGPT2", tokenizer, ids: Sequence[int], n_tokens: int, *, stop: Sequence[str] = (), **kwargs) -> Iterator[str]:
    """Stream the continuation as text (whole UTF-8 characters); ends at EOT, a stop string or n_tokens."""
    from .streaming import stream_text

    eot = tokenizer.eot_token
    tokens = generate(model, ids, n_tokens, stop_tokens=() if eot is None else (eot,), **kwargs)
    yield from stream_text(tokens, tokenizer, stop, prev=ids[-1] if len(ids) else None)


# -- loading -------------------------------------------------------------------------------------

class NumpyGPT2(NamedTuple):
    """What load() returns; unpacks picoGPT-style as `params, config = load("gpt2")`."""

    params: dict
    config: GPTConfig


def params_from_state_dict(sd: dict[str, np.ndarray], config: GPTConfig, *, linear_out_in: bool, source: str = "state dict") -> dict:
    """picoGPT's nested params from GPT-2 key names (with or without 'transformer.'), shape-checked.

    linear_out_in: the TRANSPOSED matrices are stored (out, in) (gpt2kit / nn.Linear) and get transposed.
    """
    sd = {key.removeprefix("transformer."): v for k, v in sd.items() if (key := gpt2kit_key(k)) is not None}
    C, V = config.n_embd, config.vocab_size
    used = set()

    def get(name: str, shape: tuple | None):
        if shape is None:  # a bias of a model without biases
            if name in sd:
                raise GPT2KitError(f"{source}: has {name} but the config says bias=False; is the config.json from the same model?")
            return None
        if name not in sd:
            raise GPT2KitError(f"{source}: weight {name} is missing; is the config.json from the same model?")
        used.add(name)
        a = sd[name]
        if linear_out_in and name.endswith(TRANSPOSED):
            a = a.T  # (out, in) -> (in, out): a view, no copy; BLAS reads the transposed layout as fast
        if name == "wte.weight" and a.shape[0] >= V:
            a = a[:V]  # padded rows only speed up torch matmuls; dropping them keeps every id < vocab_size
        if tuple(a.shape) != shape:
            raise GPT2KitError(f"{source}: {name} has shape {tuple(a.shape)} but the config needs {shape}")
        return a.astype(np.float32, copy=False)  # float16 checkpoints are widened; float32 ones are not copied

    bias = config.bias

    def ln(prefix):
        return {"g": get(f"{prefix}.weight", (C,)), "b": get(f"{prefix}.bias", (C,) if bias else None)}

    def lin(prefix, n_in, n_out):
        return {"w": get(f"{prefix}.weight", (n_in, n_out)), "b": get(f"{prefix}.bias", (n_out,) if bias else None)}

    params = {
        "wte": get("wte.weight", (V, C)),
        "wpe": get("wpe.weight", (config.block_size, C)),
        "blocks": [
            {
                "ln_1": ln(f"h.{i}.ln_1"),
                "attn": {"c_attn": lin(f"h.{i}.attn.c_attn", C, 3 * C), "c_proj": lin(f"h.{i}.attn.c_proj", C, C)},
                "ln_2": ln(f"h.{i}.ln_2"),
                "mlp": {"c_fc": lin(f"h.{i}.mlp.c_fc", C, 4 * C), "c_proj": lin(f"h.{i}.mlp.c_proj", 4 * C, C)},
            }
            for i in range(config.n_layer)
        ],
        "ln_f": ln("ln_f"),
    }
    extra = sorted(set(sd) - used)
    if extra:
        raise GPT2KitError(f"{source}: unexpected weights {extra[:3]} for a {config.n_layer}-layer model; is the config.json from the same model?")
    return params


def load(name_or_path: str | os.PathLike = "gpt2") -> NumpyGPT2:
    """(params, config) from a hub name (HF cache), an HF GPT-2 directory or a gpt2kit checkpoint directory."""
    d = read_model_dir(resolve_model_path(name_or_path))
    if not os.path.exists(d.weights):
        raise GPT2KitError(f"no model.safetensors in {d.path}; the NumPy backend reads safetensors only (use backend='torch' for pytorch_model.bin)")
    return NumpyGPT2(params_from_state_dict(read_safetensors(d.weights), d.config, linear_out_in=not d.hf, source=d.path), d.config)


# -- the script ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .loading import load as load_checked

    p = argparse.ArgumentParser(prog="python -m gpt2kit.numpy_gpt2", description="Generate with GPT-2 in pure NumPy (greedy by default, like picoGPT).")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--n-tokens", type=int, default=40, help="tokens to generate (default: 40)")
    p.add_argument("--model", default="gpt2", help="hub name (gpt2, gpt2-medium, ...), HF GPT-2 dir or gpt2kit checkpoint dir")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec; default: the model's own")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    try:
        model, tok = load_checked(args.model, args.tokenizer, backend="numpy")  # vocab checked, torch never imported
        ids = tok.encode(args.prompt)
        decoder = tok.stream_decoder()  # holds back bytes of a character split across tokens
        sys.stdout.write(args.prompt)
        for t in generate(model, ids, args.n_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          stop_tokens=() if tok.eot_token is None else (tok.eot_token,)):
            if t == tok.eot_token:
                break
            sys.stdout.write(decoder.push(t))
            sys.stdout.flush()
        sys.stdout.write(decoder.flush() + "\n")
    except GPT2KitError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
