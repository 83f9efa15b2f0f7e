"""Byte-level BPE trained on your corpus with HF `tokenizers` (GPT-2's scheme, your vocabulary).

Byte-level means every text encodes with no unknowns: the 256 byte symbols are always in
the vocabulary, and merges learn whole characters (a Chinese character is 3 UTF-8 bytes)
and words from the corpus. Pre-splitting uses GPT-2's regex (ByteLevel pre-tokenizer, no
prefix space) and <|endoftext|> is the one special token (the end of a document).

A tokenizer directory holds gpt2kit's tokenizer.json ({"kind": "bpe", ...}) and HF's own
serialization in hf_tokenizer.json, which HF `tokenizers.Tokenizer.from_file` opens as is.
A token may be part of a UTF-8 character; StreamDecoder holds such bytes until complete.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

from ..errors import GPT2KitError
from ..fileio import atomic_path
from .base import ENDOFTEXT, SPEC_FILE, Tokenizer, replace_surrogates
from .corpus import read_text_files
from .gpt2 import bytes_to_unicode

HF_FILE = "hf_tokenizer.json"


def _new_hf_tokenizer():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(files: Sequence[str | os.PathLike], vocab_size: int, out: str | os.PathLike | None = None,
              *, min_frequency: int = 2) -> "BPETokenizer":
    """Train a byte-level BPE on text files; save it to `out` if given. Deterministic for the same inputs."""
    from tokenizers import pre_tokenizers, trainers

    if not files:
        raise GPT2KitError("give at least one training text file")
    if vocab_size < 257:
        raise GPT2KitError(f"vocab size must be at least 257 (256 byte symbols + <|endoftext|>), got {vocab_size}")
    if min_frequency < 1:
        raise GPT2KitError(f"min frequency must be >= 1, got {min_frequency}")
    hf = _new_hf_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[ENDOFTEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(read_text_files(files), trainer=trainer)
    tok = BPETokenizer(hf)
    if out is not None:
        tok.save(out)
    return tok


class BPETokenizer(Tokenizer):
    kind = "bpe"
    split_doc = "the regex splits the text into {n} pieces; merges never cross them"

    def __init__(self, hf):
        """Wrap an HF byte-level BPE `tokenizers.Tokenizer`."""
        vocab = hf.get_vocab(with_added_tokens=True)
        self._eot = vocab.get(ENDOFTEXT)
        if self._eot is None:
            raise GPT2KitError(f"this BPE tokenizer has no {ENDOFTEXT} token; train it with `gpt2kit tokenizer train --kind bpe`")
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        n = max(vocab.values()) + 1
        table: list[bytes | None] = [None] * n
        for text, i in vocab.items():
            if i == self._eot:
                table[i] = text.encode()
            elif all(c in byte_decoder for c in text):
                table[i] = bytes(byte_decoder[c] for c in text)
            else:
                raise GPT2KitError(f"token {text!r} is not byte-level; gpt2kit's bpe kind needs a ByteLevel BPE tokenizer")
        if any(b is None for b in table):
            raise GPT2KitError("this BPE tokenizer's ids have gaps; it is not one gpt2kit can use")
        self._hf = hf
        self._hf.encode_special_tokens = True  # encode_ordinary: '<|endoftext|>' in text is text; base.encode splits it out
        self._bytes: list[bytes] = table  # type: ignore[assignment]
        self._reference = None  # the readable BPE that explain() shows, built on first use

    @property
    def n_vocab(self) -> int:
        return len(self._bytes)

    @property
    def eot_token(self) -> int:
        return self._eot

    @property
    def special_tokens(self) -> dict[str, int]:
        return {ENDOFTEXT: self._eot}

    def encode_ordinary(self, text: str) -> list[int]:
        return self._hf.encode(replace_surrogates(text), add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts: Sequence[str], **_kw) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch([replace_surrogates(t) for t in texts], add_special_tokens=False)]

    def token_bytes(self, token: int) -> bytes:
        self._check_id(token)
        return self._bytes[token]

    def split(self, text: str) -> list[str]:
        """The regex pre-split pieces (what merges never cross), as text."""
        from tokenizers import pre_tokenizers

        splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        text = replace_surrogates(text)
        return [text[a:b] for _, (a, b) in splitter.pre_tokenize_str(text)]

    def _explain_part(self, text: str) -> list[dict]:
        if self._reference is None:
            from .reference_bpe import ReferenceBPE

            self._reference = ReferenceBPE.from_hf(self._hf)
        return self._reference.explain(text)

    def spec(self) -> dict:
        return {"file": HF_FILE, "vocab_size": self.n_vocab}

    def save_files(self, directory) -> None:
        with atomic_path(os.path.join(directory, HF_FILE)) as tmp:
            self._hf.save(tmp)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_file(os.fspath(path))
        except FileNotFoundError:
            raise GPT2KitError(f"BPE tokenizer file not found: {path}") from None
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise GPT2KitError(f"{path} is not an HF tokenizers file ({str(e).splitlines()[0]}); re-train it with `gpt2kit tokenizer train --kind bpe`") from None
        if type(hf.model).__name__ != "BPE":
            raise GPT2KitError(f"{path} holds a {type(hf.model).__name__} model, not BPE; open it as its own kind (e.g. tokenizer='bert:PATH' for WordPiece)")
        return cls(hf)

    @classmethod
    def from_spec(cls, spec: dict, directory: str) -> "BPETokenizer":
        return cls.from_file(os.path.join(directory, spec.get("file", HF_FILE)))

    @classmethod
    def open(cls, path: str) -> "BPETokenizer":
        """'bpe:PATH': a gpt2kit tokenizer dir, a dir with HF's tokenizer.json, or an HF tokenizer JSON file."""
        if os.path.isdir(path):
            spec_path = os.path.join(path, SPEC_FILE)
            if os.path.exists(os.path.join(path, HF_FILE)):
                return cls.from_file(os.path.join(path, HF_FILE))
            if os.path.exists(spec_path):
                with open(spec_path, encoding="utf-8") as f:
                    head = json.load(f)
                if "model" in head:  # HF's own tokenizer.json (e.g. from save_pretrained)
                    return cls.from_file(spec_path)
                raise GPT2KitError(f"{path} holds a {head.get('kind')!r} tokenizer, not bpe; pass tokenizer={path} (without bpe:)")
            raise GPT2KitError(f"no BPE tokenizer in {path}: expected {HF_FILE} or tokenizer.json; train one with `gpt2kit tokenizer train --kind bpe --out {path}`")
        if not os.path.exists(path):
            raise GPT2KitError(f"BPE tokenizer not found: {path}; train one with `gpt2kit tokenizer train FILES --kind bpe --out {path}`")
        return cls.from_file(path)
