"""gpt2kit: GPT-2 in one package.

    import gpt2kit
    model, tok = gpt2kit.load("gpt2")           # (model, tokenizer), checked against each other
    model = gpt2kit.load_model("gpt2")          # hub name, HF-format dir, or gpt2kit checkpoint dir
    tok = gpt2kit.get_tokenizer("gpt2")         # or a checkpoint dir (its tokenizer/ travels with it)
    for t in gpt2kit.generate(model, tok.encode("Hello"), max_new_tokens=20, temperature=0.0):
        ...
    gpt2kit.save_model(model, "out/dir", tokenizer=tok)

Attributes import lazily so that torch-free parts (the tokenizers, numpy_gpt2) never load torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "loading",
    "load_model": "weights",
    "save_model": "weights",
    "download": "weights",
    "generate": "generation",
    "generate_text": "generation",
    "GPT": "model",
    "GPTConfig": "config",
    "get_tokenizer": "tokenization",
    "GPT2KitError": "errors",
    "SamplingParams": "sampling",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'gpt2kit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
