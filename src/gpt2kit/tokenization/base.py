"""The tokenizer interface every kind implements, and the streaming decoder.

The API follows tiktoken: encode(text, *, allowed_special=..., disallowed_special='all'),
encode_ordinary, encode_batch, decode, decode_bytes, eot_token, n_vocab. Each kind also
saves itself to a directory (tokenizer.json + its own files) so a checkpoint carries it.
"""
from __future__ import annotations

import codecs
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from ..errors import GPT2KitError
from ..fileio import write_json_atomic

SPEC_FILE = "tokenizer.json"
ENDOFTEXT = "<|endoftext|>"  # GPT-2's end-of-document token text; every kind that has one uses it


def replace_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded (nor cross into Rust); like tiktoken, they become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer(ABC):
    kind: str = ""
    # Id that stands for text outside the vocabulary (a declared loss), or None if every text encodes exactly.
    unk_token: int | None = None
    # How split() cuts a text, for explain()'s readers; {n} is the number of pieces.
    split_doc: str = "each character is one piece ({n} pieces)"
    # Jinja chat template stored with the tokenizer (chat_template.jinja); None = gpt2kit's plain default.
    chat_template: str | None = None

    # -- required ---------------------------------------------------------------
    @property
    @abstractmethod
    def n_vocab(self) -> int: ...

    @property
    def eot_token(self) -> int | None:
        """Id that ends a document (GPT-2's <|endoftext|>), or None if the kind has none."""
        return None

    @property
    def special_tokens(self) -> dict[str, int]:
        return {}

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings as plain text."""

    @abstractmethod
    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes one token stands for (special tokens give their text)."""

    @abstractmethod
    def spec(self) -> dict:
        """JSON-able description written to tokenizer.json; load() reverses it."""

    # -- shared behaviour -------------------------------------------------------
    def encode(self, text: str, *, allowed_special="none_raise", disallowed_special="all") -> list[int]:
        """tiktoken semantics: special-token text raises unless allowed (allowed_special='all' or a set)."""
        allowed = _resolve_allowed(self.special_tokens, allowed_special)
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        for s in disallowed:
            if s in text:
                raise special_token_error(s)
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        for piece, special in _split_specials(text, allowed):
            out.extend([self.special_tokens[piece]] if special else self.encode_ordinary(piece))
        return out

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token as text: its UTF-8 text, or <hex bytes> where it holds only part of a character."""
        return [bytes_label(self.token_bytes(i)) for i in ids]

    def split(self, text: str) -> list[str]:
        """The pieces encoding never joins across (here: characters; kinds that pre-split override it)."""
        return list(text)

    def explain(self, text: str, *, allowed_special="none_raise") -> list[dict]:
        """How text becomes ids, in order: {"special": s, "ids": [id]} for an allowed special token, else
        {"piece": p, "ids": [...]} for each split() piece; BPE kinds add "symbols", "merges" and "bytes"."""
        allowed = _resolve_allowed(self.special_tokens, allowed_special)
        steps: list[dict] = []
        for part, special in _split_specials(text, allowed) if allowed else [(text, False)]:
            steps.extend([{"special": part, "ids": [self.special_tokens[part]]}] if special else self._explain_part(part))
        return steps

    def _explain_part(self, text: str) -> list[dict]:
        return [{"piece": p, "ids": self.encode_ordinary(p)} for p in self.split(text)]

    def stream_bytes(self, prev: int | None, token: int) -> bytes:
        """Bytes `token` adds after `prev` (None at the start). Kinds whose spacing depends on the
        neighbour (bert puts a space between two words) override this; the rest are context-free."""
        return self.token_bytes(token)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8, **kw) -> list[list[int]]:
        return [self.encode(t, **kw) for t in texts]

    def decode_bytes(self, tokens: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(t) for t in tokens)

    def decode(self, tokens: Iterable[int], errors: str = "replace") -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def _check_id(self, token: int) -> None:
        if not 0 <= token < self.n_vocab:
            raise GPT2KitError(f"token id {token} out of range for a vocabulary of {self.n_vocab}")

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.save_files(directory)
        if self.chat_template is not None:
            from ..chat_template import write_template

            write_template(directory, self.chat_template)
        write_json_atomic(os.path.join(directory, SPEC_FILE), {"kind": self.kind, **self.spec()})

    def save_files(self, directory: str | os.PathLike) -> None:
        """Write extra files (vocab lists, tokenizer models) a kind needs beside tokenizer.json."""

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} n_vocab={self.n_vocab}>"


class StreamDecoder:
    """Turns a stream of token ids into text pieces that never split a UTF-8 character.

    Bytes of an incomplete character are held until the token that completes it arrives;
    bytes that can never form a character become U+FFFD, as in decode().
    """

    def __init__(self, tokenizer: Tokenizer, prev: int | None = None):
        """prev: the token before the stream (a prompt's last), for kinds whose spacing depends on it."""
        self.tokenizer = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._prev = prev

    def push(self, token: int) -> str:
        data = self.tokenizer.stream_bytes(self._prev, token)
        self._prev = token
        return self._dec.decode(data)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def unknown_rate(tokenizer: Tokenizer, ids) -> float:
    """Fraction of `ids` that are the tokenizer's unknown id (0.0 for kinds with none, or no ids)."""
    import numpy as np

    unk = tokenizer.unk_token
    arr = np.asarray(ids)
    if unk is None or arr.size == 0:
        return 0.0
    return float(np.count_nonzero(arr == unk)) / arr.size


def special_token_error(s: str) -> GPT2KitError:
    return GPT2KitError(f"text contains the special token {s!r}; pass allowed_special={{{s!r}}} to encode it "
                        "as a special token, or disallowed_special=() to encode it as text")


def bytes_label(b: bytes) -> str:
    """Bytes as text, or as <hex> where they are not whole UTF-8 (part of a character)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + b.hex(" ") + ">"


def _resolve_allowed(specials: dict[str, int], allowed_special) -> set[str]:
    if allowed_special == "all":
        return set(specials)
    if allowed_special == "none_raise" or not allowed_special:
        return set()
    unknown = set(allowed_special) - set(specials)
    if unknown:
        raise GPT2KitError(f"unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(specials)}")
    return set(allowed_special)


def _split_specials(text: str, allowed: set[str]):
    """Yield (piece, is_special), splitting text at the allowed special strings."""
    import regex

    pattern = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
    for i, piece in enumerate(pattern.split(text)):
        if piece:
            yield piece, i % 2 == 1


class TableTokenizer(Tokenizer):
    """A kind whose ids index a table of texts (char, word): the vocabulary, then the
    optional unknown id, then the optional <|endoftext|> id. Subclasses set _text, _bytes and _eot."""

    _text: list[str]
    _bytes: list[bytes]
    _eot: int | None

    def token_bytes(self, token: int) -> bytes:
        self._check_id(token)
        return self._bytes[token]

    def decode(self, tokens, errors: str = "replace") -> str:
        text = self._text
        out = []
        for t in tokens:
            self._check_id(t)
            out.append(text[t])
        return "".join(out)

    @property
    def n_vocab(self) -> int:
        return len(self._bytes)

    @property
    def eot_token(self) -> int | None:
        return self._eot

    @property
    def special_tokens(self) -> dict[str, int]:
        return {} if self._eot is None else {ENDOFTEXT: self._eot}
