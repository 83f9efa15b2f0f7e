"""Tokenizers: one interface (base.Tokenizer), several kinds, one loader.

get_tokenizer(spec) accepts:
  'gpt2'                  GPT-2's BPE (tiktoken engine, OpenAI's files)
  a directory             a saved tokenizer (tokenizer.json), or a checkpoint holding tokenizer/
  'KIND:PATH'             a kind that loads from files (added by each kind's module)
Kinds that are built from a corpus ('char', 'word') come from build_tokenizer(spec, texts).

Kinds: gpt2 (OpenAI's BPE), char (字), word (jieba 分词), bpe (byte-level BPE trained with
HF tokenizers: 'bpe:DIR'), bert (WordPiece vocab.txt: 'bert:vocab.txt', 'bert-cased:vocab.txt').
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ..errors import GPT2KitError
from ..fileio import read_json
from .base import SPEC_FILE, StreamDecoder, Tokenizer, unknown_rate
from .bert import BertTokenizer
from .bpe import BPETokenizer, train_bpe
from .char import CharTokenizer
from .gpt2 import GPT2Tokenizer
from .word import WordTokenizer

# kind -> loader(spec_dict, directory) for tokenizer.json
LOADERS: dict[str, Callable[[dict, str], Tokenizer]] = {
    "gpt2": lambda spec, d: GPT2Tokenizer(),
    "char": CharTokenizer.from_spec,
    "word": WordTokenizer.from_spec,
    "bpe": BPETokenizer.from_spec,
    "bert": BertTokenizer.from_spec,
}
# kind -> {tokenizer.json field: type}, checked before loading; REQUIRED fields have no default
SPEC_TYPES: dict[str, dict[str, type]] = {
    "gpt2": {},
    "char": {"chars": str, "unk": bool, "eot": bool},
    "word": {"words": list, "unk": bool, "eot": bool, "hmm": bool},
    "bpe": {"file": str},
    "bert": {"file": str, "lowercase": bool},
}
REQUIRED = {"char": ("chars",), "word": ("words",)}
# kind -> builder(texts, **options) for kinds whose vocabulary comes from the corpus
BUILDERS: dict[str, Callable[..., Tokenizer]] = {
    "char": CharTokenizer.build,
    "word": WordTokenizer.build,
}
# kind -> opener(path) for 'KIND:PATH' specs
OPENERS: dict[str, Callable[[str], Tokenizer]] = {
    "bpe": BPETokenizer.open,
    "bert": BertTokenizer.open,
    "bert-cased": lambda path: BertTokenizer.open(path, lowercase=False),
}

_HUB_GPT2_NAMES = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "124M", "355M", "774M", "1558M"}


def get_tokenizer(spec: str | os.PathLike = "gpt2") -> Tokenizer:
    """A ready tokenizer from a name, a tokenizer/checkpoint directory, or 'KIND:PATH'."""
    spec = os.fspath(spec)
    if spec in _HUB_GPT2_NAMES or spec.startswith("openai-community/gpt2"):
        return GPT2Tokenizer()
    if os.path.isdir(spec):
        return load_tokenizer(spec)
    kind, sep, path = spec.partition(":")
    if sep and kind in OPENERS:
        return OPENERS[kind](path)
    if spec in BUILDERS:
        raise GPT2KitError(f"tokenizer {spec!r} is built from a corpus: use `gpt2kit prepare --tokenizer {spec}`, or pass a saved tokenizer directory")
    raise GPT2KitError(
        f"unknown tokenizer {spec!r}; use 'gpt2', a tokenizer or checkpoint directory, or one of "
        + ", ".join(f"'{k}:PATH'" for k in sorted(OPENERS)) + (" (or a corpus-built kind: " + ", ".join(sorted(BUILDERS)) + ")")
    )


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by Tokenizer.save (also accepts a checkpoint dir with tokenizer/)."""
    directory = os.fspath(directory)
    if not os.path.exists(os.path.join(directory, SPEC_FILE)):
        sub = os.path.join(directory, "tokenizer")
        if os.path.exists(os.path.join(sub, SPEC_FILE)):
            directory = sub
        elif _is_hf_gpt2_dir(directory):
            return _with_template(GPT2Tokenizer(), directory)  # an HF GPT-2 directory with GPT-2's own vocabulary
        else:
            raise GPT2KitError(f"no tokenizer in {directory}: expected {SPEC_FILE} or tokenizer/{SPEC_FILE}")
    path = os.path.join(directory, SPEC_FILE)
    spec = read_json(path, "tokenizer spec")
    if not isinstance(spec, dict):
        raise GPT2KitError(f"{path} must hold a JSON object, not {type(spec).__name__}; restore it or re-save the tokenizer")
    kind = spec.pop("kind", None)
    if not isinstance(kind, str) or kind not in LOADERS:
        raise GPT2KitError(f"{path} names tokenizer kind {kind!r:.60}; this gpt2kit knows {sorted(LOADERS)}")
    _check_spec(kind, spec, path)
    return _with_template(LOADERS[kind](spec, directory), directory)


def _with_template(tok: Tokenizer, directory: str) -> Tokenizer:
    """The chat template saved beside the tokenizer's files, if any (see chat_template.py)."""
    from ..chat_template import read_template

    tok.chat_template = read_template(directory)
    return tok


def _check_spec(kind: str, spec: dict, path: str) -> None:
    fix = "restore it or re-create the tokenizer (gpt2kit tokenizer train, or gpt2kit prepare)"
    for name in REQUIRED.get(kind, ()):
        if name not in spec:
            raise GPT2KitError(f"{path} lacks the field {name!r} that a {kind} tokenizer needs; {fix}")
    for name, t in SPEC_TYPES[kind].items():
        v = spec.get(name)
        if name in spec and (not isinstance(v, t) or (isinstance(v, bool) and t is not bool)):
            raise GPT2KitError(f"{path}: field {name!r} must be a {t.__name__}, got {v!r:.60}; {fix}")


def _is_hf_gpt2_dir(directory: str) -> bool:
    cfg = os.path.join(directory, "config.json")
    if not os.path.exists(cfg):
        return False
    c = read_json(cfg, "config")
    return isinstance(c, dict) and c.get("model_type") == "gpt2" and c.get("vocab_size") == 50257


def build_tokenizer(spec: str, texts: Iterable[str], **options) -> Tokenizer:
    """A tokenizer for a corpus: corpus-built kinds learn their vocabulary; others just load."""
    if spec in BUILDERS:
        return BUILDERS[spec](texts, **options)
    return get_tokenizer(spec)


__all__ = [
    "Tokenizer", "StreamDecoder", "GPT2Tokenizer", "CharTokenizer", "WordTokenizer", "BPETokenizer", "BertTokenizer",
    "get_tokenizer", "load_tokenizer", "build_tokenizer", "train_bpe", "unknown_rate",
]
