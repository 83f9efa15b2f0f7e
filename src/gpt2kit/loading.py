"""gpt2kit.load: a model and its tokenizer, checked against each other.

Every verb that runs a model loads it here, so the tokenizer-vs-model vocabulary check and
the device check live in one place. Torch is imported only for backend="torch".
"""
from __future__ import annotations

import os

from .errors import GPT2KitError

BACKENDS = ("torch", "numpy")


def load(model: str | os.PathLike = "gpt2", tokenizer=None, *, dtype: str | None = None, device: str | None = None,
         backend: str = "torch", need_tokenizer: bool = True, adapter: str | os.PathLike | None = None, inference: bool = False):
    """(model, tokenizer) from a hub name, HF-format dir or gpt2kit checkpoint dir.

    adapter: a LoRA adapter dir (gpt2kit's or peft's), merged into the weights as they load.

    tokenizer: a spec for get_tokenizer, a Tokenizer, or None for the model's own (GPT-2 BPE for
    hub/HF models). need_tokenizer=False returns (model, None) when the model carries none.
    backend="numpy" gives the pure-NumPy model (float32, CPU, no torch imported).
    inference=True lays the weights out for the fastest CPU kernels (weights.for_inference): generate, serve
    and eval; the model then does not train or save.
    """
    from .checkpoint import refuse_adapter_dir
    from .hub import resolve_model_path

    if backend not in BACKENDS:
        raise GPT2KitError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "numpy" and (device not in (None, "cpu") or dtype not in (None, "float32")):
        raise GPT2KitError("backend='numpy' runs float32 on the CPU; drop device=/dtype= or use backend='torch'")
    if backend == "numpy" and adapter is not None:
        raise GPT2KitError("backend='numpy' cannot apply adapter=; use backend='torch', or load a model the adapter is merged into")
    path = resolve_model_path(model)
    refuse_adapter_dir(path)  # before the tokenizer lookup fails on it less clearly
    tok = _tokenizer(tokenizer, path, need_tokenizer)
    if backend == "numpy":
        from .numpy_gpt2 import load as load_numpy

        m = load_numpy(path)
    else:
        from .weights import load_model

        m = load_model(path, dtype=dtype, device=check_device(device or "cpu"), adapter=adapter, inference=inference)
    if tok is not None:
        check_vocab(tok, m.config.vocab_size)
    return m, tok


def _tokenizer(tokenizer, path: str, need: bool):
    from .tokenization import Tokenizer, get_tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    try:
        return get_tokenizer(tokenizer or path)
    except GPT2KitError:
        if need or tokenizer is not None:
            raise
        return None  # e.g. hf/llmc export: the weights are usable without one


def check_vocab(tokenizer, vocab_size: int) -> None:
    """A tokenizer and a model must agree on the vocabulary, or ids index the wrong rows (or none)."""
    if tokenizer.n_vocab != vocab_size:
        raise GPT2KitError(f"the tokenizer has {tokenizer.n_vocab} tokens but the model expects {vocab_size}; "
                           "pass tokenizer=SPEC naming the model's own tokenizer")


def check_device(device: str) -> str:
    """A torch device string that exists on this machine (torch's own errors are asserts or tracebacks)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GPT2KitError(f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GPT2KitError(f"device={device!r} was asked for but CUDA is not available in this torch build; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GPT2KitError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise GPT2KitError(f"device={device!r} was asked for but MPS is not available; use device='cpu'")
    return device
