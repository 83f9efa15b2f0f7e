"""Moving models between gpt2kit and other tools.

Readers: OpenAI's TensorFlow checkpoints (tf_checkpoint), nanoGPT ckpt.pt (nanogpt),
llm.c model and token files (llmc), and HF GPT-2 folders (weights.load_dir).
Writers: HF folders (hf_export), GGUF for llama.cpp (gguf_export), llm.c (llmc).
`detect_format` and `load_any` pick the reader for a path, for `gpt2kit convert`.
"""
from __future__ import annotations

import os

from ..errors import GPT2KitError

FORMATS = ("openai-tf", "nanogpt", "llmc", "hf", "gpt2kit")


def detect_format(path: str) -> str:
    """Which reader handles `path`: one of FORMATS (llm.c token files are refused here)."""
    from . import llmc, tf_checkpoint

    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise GPT2KitError(f"not found: {path}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            from ..checkpoint import is_checkpoint_dir

            return "gpt2kit" if is_checkpoint_dir(path) else "hf"
        if tf_checkpoint.is_tf_checkpoint(path):
            return "openai-tf"
        if os.path.exists(os.path.join(path, "ckpt.pt")):
            return "nanogpt"
        raise GPT2KitError(f"{path} holds no model gpt2kit can convert: expected OpenAI's model.ckpt.* + hparams.json, a nanoGPT ckpt.pt, or an HF config.json")
    if tf_checkpoint.is_tf_checkpoint(path):
        return "openai-tf"
    magic = llmc.sniff(path)
    if magic == llmc.MODEL_MAGIC:
        return "llmc"
    if magic == llmc.TOKENS_MAGIC:
        raise GPT2KitError(f"{path} is an llm.c token file, not a model; read it with gpt2kit.interop.llmc.read_tokens or pass it to `gpt2kit eval perplexity --data`")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip container, or a legacy pickle
        return "nanogpt"
    raise GPT2KitError(f"cannot tell the format of {path}: not a TF checkpoint, llm.c model (magic {llmc.MODEL_MAGIC}) or torch checkpoint")


def load_any(path: str, trust_pickle: bool = False, fmt: str | None = None):
    """(model, tokenizer or None, info dict) from any supported format."""
    fmt = fmt or detect_format(path)
    info = {"source": os.path.abspath(path), "source_format": fmt}
    if fmt == "openai-tf":
        from .tf_checkpoint import load_openai_checkpoint

        model, tok = load_openai_checkpoint(path)
    elif fmt == "nanogpt":
        from .nanogpt import load_nanogpt

        model, tok, extra = load_nanogpt(path, trust_pickle)
        info.update(extra)
    elif fmt == "llmc":
        from ..tokenization.gpt2 import GPT2Tokenizer
        from .llmc import read_model

        model, extra = read_model(path)
        tok = GPT2Tokenizer() if model.config.vocab_size == 50257 else None
        info.update(llmc_version=extra["version"])
    elif fmt in ("hf", "gpt2kit"):
        from ..tokenization import get_tokenizer
        from ..weights import load_model

        model = load_model(path)
        try:
            tok = get_tokenizer(path)
        except GPT2KitError:
            tok = None
    else:
        raise GPT2KitError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return model, tok, info
