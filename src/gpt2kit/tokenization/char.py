"""Character-level tokenizer (nanoGPT's shakespeare_char, GPT2-Chinese's 字 vocabulary).

The vocabulary is the sorted set of characters in the corpus (so tiny shakespeare gives
nanoGPT's exact 65 ids), optionally dropping characters rarer than min_freq. Characters
outside the vocabulary map to an explicit unknown id placed after them; it decodes as
U+FFFD. A vocabulary converted from nanoGPT's meta.pkl has no unknown id. With eot=True
an <|endoftext|> id comes last, so documents can be separated (and generation can stop).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..errors import GPT2KitError
from .base import ENDOFTEXT, TableTokenizer

UNK_TEXT = "\ufffd"


class CharTokenizer(TableTokenizer):
    kind = "char"

    def __init__(self, chars: list[str], unk: bool = True, eot: bool = False):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise GPT2KitError("char vocabulary must be distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.unk_token = len(self.chars) if unk else None
        self._eot = len(self.chars) + int(unk) if eot else None
        self._text = self.chars + ([UNK_TEXT] if unk else []) + ([ENDOFTEXT] if eot else [])
        self._bytes = [c.encode("utf-8", "surrogatepass") for c in self._text]

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, unk: bool = True, eot: bool = False, **_ignored) -> "CharTokenizer":
        """Vocabulary of the corpus characters seen at least min_freq times (other options are for other kinds)."""
        if min_freq < 1:
            raise GPT2KitError(f"min_freq must be >= 1, got {min_freq}")
        counts: Counter = Counter()
        for t in texts:
            counts.update(t)
        return cls(sorted(c for c, n in counts.items() if n >= min_freq), unk=unk, eot=eot)

    def encode_ordinary(self, text: str) -> list[int]:
        stoi, unk = self.stoi, self.unk_token
        if unk is None:
            try:
                return [stoi[c] for c in text]
            except KeyError as e:
                raise GPT2KitError(f"character {e.args[0]!r} is not in this char vocabulary (it has no unknown token)") from None
        return [stoi.get(c, unk) for c in text]

    def spec(self) -> dict:
        return {"chars": "".join(self.chars), "unk": self.unk_token is not None, "eot": self._eot is not None}

    @classmethod
    def from_spec(cls, spec: dict, directory: str) -> "CharTokenizer":
        return cls(list(spec["chars"]), unk=spec.get("unk", True), eot=spec.get("eot", False))
