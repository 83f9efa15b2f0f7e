"""Word-level tokenizer (GPT2-Chinese's 分词 vocabulary): jieba segmentation, vocabulary from the corpus.

jieba's default mode yields pieces whose concatenation is the input, whitespace and
newlines included, so decode(encode(text)) == text except where a declared unknown stands.
The vocabulary is every word seen at least min_freq times plus every character seen at
least min_freq times: a word outside the vocabulary falls back to its characters, and only
a character outside it becomes the unknown id (decoded as U+FFFD). Ids are ordered by
frequency (ties by text), then the unknown id, then <|endoftext|> if eot=True.
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

from ..errors import GPT2KitError
from ..extras import require
from .base import TableTokenizer
from .char import ENDOFTEXT, UNK_TEXT


@functools.lru_cache(maxsize=1)
def _jieba():
    """One jieba segmenter per process (its dictionary takes ~0.5 s to load; forked workers inherit it)."""
    import logging

    jieba = require("jieba", "the word tokenizer (分词)")
    jieba.setLogLevel(logging.WARNING)
    seg = jieba.Tokenizer()
    seg.initialize()
    return seg


# jieba segments each run of han/alphanumeric characters (a "block", its re_han_default) on its
# own, and its HMM pass copies paths, so a block costs time quadratic in its length (a megabyte
# without spaces or punctuation: minutes). Text is fed to jieba in pieces cut before a block,
# which changes nothing; a block longer than BLOCK_CHARS (no natural text has one) is cut every
# BLOCK_CHARS characters, the one place the result can differ from jieba on the whole text.
BLOCK_CHARS = 256


def segment(text: str, hmm: bool = True) -> list[str]:
    """jieba's default-mode pieces of text, in linear time; they concatenate back to text exactly."""
    seg = _jieba()
    return [w for piece in _bounded_pieces(text) for w in seg.cut(piece, cut_all=False, HMM=hmm)]


def _bounded_pieces(text: str) -> Iterable[str]:
    import jieba

    limit, start = BLOCK_CHARS, 0
    for m in jieba.re_han_default.finditer(text):
        s, e = m.span()
        if s - start >= limit:  # enough gathered: cut before this block, where jieba cuts too
            yield text[start:s]
            start = s
        if e - s > limit:
            if s > start:
                yield text[start:s]
            for k in range(s, e, limit):
                yield text[k:min(k + limit, e)]
            start = e
    if start < len(text):
        yield text[start:]


def count_words(texts: Iterable[str], hmm: bool = True, num_proc: int = 1) -> tuple[Counter, Counter]:
    """(word counts, character counts) over texts: what build() needs. With num_proc > 1 the
    segmentation runs in worker processes; counts are sums, so the result does not depend on it."""
    if num_proc > 1:
        return _count_parallel(texts, hmm, num_proc)
    words: Counter = Counter()
    chars: Counter = Counter()
    for t in texts:
        words.update(segment(t, hmm))
        chars.update(t)
    return words, chars


def _batches(texts: Iterable[str], target: int = 1 << 16) -> Iterable[list[str]]:
    """Group texts into ~target-char batches, long texts cut by corpus.chunk_text (jieba segments its pieces alike)."""
    from .corpus import chunk_text

    batch: list[str] = []
    size = 0
    for t in texts:
        for piece in chunk_text(t, target):
            batch.append(piece)
            size += len(piece)
            if size >= target:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _count_batch(args: tuple[list[str], bool]) -> tuple[Counter, Counter]:
    return count_words(args[0], args[1])


def _count_parallel(texts: Iterable[str], hmm: bool, num_proc: int) -> tuple[Counter, Counter]:
    import multiprocessing as mp

    _jieba()  # load the dictionary once, before forking, so workers inherit it
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    words: Counter = Counter()
    chars: Counter = Counter()
    from concurrent.futures import ProcessPoolExecutor

    # an executor, not mp.Pool: a worker that dies or raises a BaseException fails the call instead of hanging it
    with ProcessPoolExecutor(num_proc, mp_context=ctx) as pool:
        for w, c in pool.map(_count_batch, ((b, hmm) for b in _batches(texts))):
            words.update(w)
            chars.update(c)
    return words, chars


class WordTokenizer(TableTokenizer):
    kind = "word"
    split_doc = "jieba splits the text into {n} words"

    def __init__(self, words: list[str], unk: bool = True, eot: bool = False, hmm: bool = True):
        if len(set(words)) != len(words) or any(not isinstance(w, str) or not w for w in words):
            raise GPT2KitError("word vocabulary must be distinct non-empty strings")
        self.words = list(words)
        self.hmm = hmm
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.unk_token = len(self.words) if unk else None
        self._eot = len(self.words) + int(unk) if eot else None
        self._text = self.words + ([UNK_TEXT] if unk else []) + ([ENDOFTEXT] if eot else [])
        self._bytes = [w.encode("utf-8", "surrogatepass") for w in self._text]

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, unk: bool = True, eot: bool = False, hmm: bool = True,
              num_proc: int = 1, **_ignored) -> "WordTokenizer":
        """Vocabulary from a corpus (segmented by num_proc processes; the result is the same for any number)."""
        if min_freq < 1:
            raise GPT2KitError(f"min_freq must be >= 1, got {min_freq}")
        words, chars = count_words(texts, hmm, num_proc)
        keep = {w: n for w, n in words.items() if n >= min_freq}
        for c, n in chars.items():  # the character fallback
            if n >= min_freq:
                keep[c] = max(keep.get(c, 0), words.get(c, 0))
        return cls(sorted(keep, key=lambda w: (-keep[w], w)), unk=unk, eot=eot, hmm=hmm)

    def encode_ordinary(self, text: str) -> list[int]:
        stoi, unk = self.stoi, self.unk_token
        out: list[int] = []
        for w in segment(text, self.hmm):
            i = stoi.get(w)
            if i is not None:
                out.append(i)
                continue
            for c in w:  # a word outside the vocabulary: spell it
                i = stoi.get(c, unk)
                if i is None:
                    raise GPT2KitError(f"character {c!r} is not in this word vocabulary (it has no unknown token)")
                out.append(i)
        return out

    def split(self, text: str) -> list[str]:
        return segment(text, self.hmm)

    def spec(self) -> dict:
        return {"unk": self.unk_token is not None, "eot": self._eot is not None, "hmm": self.hmm, "words": self.words}

    @classmethod
    def from_spec(cls, spec: dict, directory: str) -> "WordTokenizer":
        if not isinstance(spec.get("words"), list):
            raise GPT2KitError(f"{directory}/tokenizer.json has no word list; re-create it with `gpt2kit tokenizer train --kind word`")
        return cls(spec["words"], unk=spec.get("unk", True), eot=spec.get("eot", False), hmm=spec.get("hmm", True))
