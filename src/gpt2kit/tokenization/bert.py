"""BERT WordPiece vocabularies (GPT2-Chinese's vocab.txt), encoded by HF `tokenizers`.

Encoding is BERT's: clean the text, lowercase and strip accents (uncased vocab; the
'bert-cased:' spec keeps case), split CJK characters, whitespace and punctuation, then
greedy longest-match WordPiece with '##' continuations. The ids equal HF's
BertWordPieceTokenizer on the same vocab.txt (add_special_tokens=False). Like GPT2-Chinese,
a newline is encoded as [SEP] (BERT itself drops it), and [CLS] is the end-of-text token
(GPT2-Chinese ends each article with [CLS]).

Declared losses: a word WordPiece cannot spell becomes [UNK] (decoded as U+FFFD), an uncased
vocab loses case and accents, and whitespace other than newlines is not kept: decode puts
one space between two words that BERT would otherwise join (Latin, digits, symbols) and
none next to CJK, punctuation or an unknown.
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence

from ..errors import GPT2KitError
from ..fileio import atomic_path
from .base import Tokenizer, replace_surrogates
from .char import UNK_TEXT

VOCAB_FILE = "vocab.txt"
UNK, SEP, CLS, PAD, MASK = "[UNK]", "[SEP]", "[CLS]", "[PAD]", "[MASK]"
MAX_CHARS_PER_WORD = 100  # BERT's and HF's default: longer words are [UNK]


def is_cjk(cp: int) -> bool:
    """BERT's _is_chinese_char: the CJK ideograph blocks it splits into single characters."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def is_punctuation(ch: str) -> bool:
    """BERT's _is_punctuation: ASCII symbols and Unicode P* are split off as their own words."""
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(ch).startswith("P")


def _wordish(ch: str) -> bool:
    """Characters BERT glues into words, so two such words need a space between them when decoded.
    The unknown mark is not one: GPT2-Chinese's [UNK]s mostly stand for CJK characters."""
    return not (ch == UNK_TEXT or ch.isspace() or is_cjk(ord(ch)) or is_punctuation(ch))


# Rust's char::is_whitespace (Unicode White_Space): HF trims these from each vocab line. Python's
# str.rstrip() would also trim \x1c-\x1f, shifting ids for a vocab that has them.
_RUST_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def vocab_lines(vocab_text: str) -> list[str]:
    """One token per line, as HF's WordPiece.read_file reads vocab.txt (split on '\\n', trailing whitespace trimmed)."""
    lines = vocab_text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip(_RUST_WS) for line in lines]


def read_vocab(path: str | os.PathLike) -> str:
    """The text of a vocab.txt, with a one-line error for a missing or non-UTF-8 file."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            raw = f.read()
    except FileNotFoundError:
        raise GPT2KitError(f"BERT vocab file not found: {path}; pass tokenizer='bert:PATH/vocab.txt'") from None
    except UnicodeDecodeError:
        raise GPT2KitError(f"{path} is not UTF-8 text; a BERT vocab.txt has one UTF-8 token per line") from None
    return raw


class BertTokenizer(Tokenizer):
    kind = "bert"
    split_doc = "BERT normalizes and splits the text into {n} words"

    def __init__(self, vocab_text: str, lowercase: bool = True):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import WordPiece
        from tokenizers.normalizers import BertNormalizer
        from tokenizers.pre_tokenizers import BertPreTokenizer

        self.tokens = vocab_lines(vocab_text)
        self.vocab_text, self.lowercase = vocab_text, lowercase
        vocab = {t: i for i, t in enumerate(self.tokens)}  # a repeated line keeps its last id, as in HF
        if UNK not in vocab:
            raise GPT2KitError(f"this vocab.txt has no {UNK} line; a BERT vocabulary needs one")
        self.unk_token = vocab[UNK]
        self._sep, self._cls = vocab.get(SEP), vocab.get(CLS)
        self._specials = {t: vocab[t] for t in (PAD, UNK, CLS, SEP, MASK) if t in vocab}
        hf = HFTokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD))
        hf.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        hf.pre_tokenizer = BertPreTokenizer()
        self._hf = hf
        # What each id shows: the piece without '##', a newline for [SEP], U+FFFD for [UNK].
        self._text: list[str] = []
        self._cont: list[bool] = []
        for i, t in enumerate(self.tokens):
            cont = t.startswith("##") and len(t) > 2
            self._text.append("\n" if i == self._sep else UNK_TEXT if i == self.unk_token else t[2:] if cont else t)
            self._cont.append(cont)
        self._bytes = [t.encode("utf-8") for t in self._text]
        self._first = [bool(t) and _wordish(t[0]) for t in self._text]
        self._last = [bool(t) and _wordish(t[-1]) for t in self._text]

    @classmethod
    def open(cls, path: str, lowercase: bool = True) -> "BertTokenizer":
        if os.path.isdir(path):
            path = os.path.join(path, VOCAB_FILE)
        return cls(read_vocab(path), lowercase=lowercase)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def eot_token(self) -> int | None:
        return self._cls

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def encode_ordinary(self, text: str) -> list[int]:
        text = replace_surrogates(text)
        enc = self._hf.encode(text, add_special_tokens=False)
        if self._sep is None or "\n" not in text:
            return enc.ids
        # Put a [SEP] where each newline was: after the tokens that start before it.
        out: list[int] = []
        ids, offsets = enc.ids, enc.offsets
        k, n = 0, len(ids)
        pos = text.find("\n")
        while pos >= 0:
            while k < n and offsets[k][0] < pos:
                out.append(ids[k])
                k += 1
            out.append(self._sep)
            pos = text.find("\n", pos + 1)
        out.extend(ids[k:])
        return out

    def encode_ordinary_batch(self, texts: Sequence[str], **_kw) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    def token_bytes(self, token: int) -> bytes:
        self._check_id(token)
        return self._bytes[token]

    def stream_bytes(self, prev: int | None, token: int) -> bytes:
        self._check_id(token)
        if prev is not None and not self._cont[token] and self._last[prev] and self._first[token]:
            return b" " + self._bytes[token]
        return self._bytes[token]

    def decode_bytes(self, tokens) -> bytes:
        out, prev = [], None
        for t in tokens:
            out.append(self.stream_bytes(prev, t))
            prev = t
        return b"".join(out)

    def pieces(self, ids) -> list[str]:
        """Each token as its vocabulary entry (continuations keep their ##)."""
        out = []
        for i in ids:
            self._check_id(i)
            out.append(self.tokens[i])
        return out

    def split(self, text: str) -> list[str]:
        """BERT's words before WordPiece (after normalization)."""
        normalized = self._hf.normalizer.normalize_str(replace_surrogates(text))
        return [w for w, _ in self._hf.pre_tokenizer.pre_tokenize_str(normalized)]

    def spec(self) -> dict:
        return {"file": VOCAB_FILE, "lowercase": self.lowercase}

    def save_files(self, directory) -> None:
        with atomic_path(os.path.join(directory, VOCAB_FILE)) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(self.vocab_text)

    @classmethod
    def from_spec(cls, spec: dict, directory: str) -> "BertTokenizer":
        return cls(read_vocab(os.path.join(directory, spec.get("file", VOCAB_FILE))), lowercase=spec.get("lowercase", True))
