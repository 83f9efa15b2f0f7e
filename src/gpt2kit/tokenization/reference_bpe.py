"""A readable GPT-2 BPE in pure Python: OpenAI's encoder.py algorithm, for tests and teaching.

Slow but obvious. The fast path (tiktoken, gpt2.py) must give the same ids; the tests
check that on the shared English and Chinese corpora. `explain()` shows the work: the
regex pieces and each merge applied, like minGPT's encode_and_show_work.
"""
from __future__ import annotations

import regex

from .base import replace_surrogates
from .gpt2 import PAT_STR, bytes_to_unicode, load_encoder


class ReferenceBPE:
    def __init__(self, encoder: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None):
        """GPT-2's vocabulary by default; or any byte-level BPE's {symbols: id} and ordered merges."""
        if encoder is None or merges is None:
            encoder, merges = load_encoder()
        self.encoder = encoder
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.pat = regex.compile(PAT_STR)
        self.cache: dict[str, list[str]] = {}

    def bpe(self, token: str, trace: list | None = None) -> list[str]:
        """Merge the lowest-ranked adjacent pair until none of the pairs is in vocab.bpe."""
        if token in self.cache and trace is None:
            return self.cache[token]
        word = list(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            new_word, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = new_word
            if trace is not None:
                trace.append((best, self.bpe_ranks[best], list(word)))
        self.cache[token] = word
        return word

    @classmethod
    def from_hf(cls, hf_tokenizer) -> "ReferenceBPE":
        """The same algorithm on a byte-level BPE trained with HF tokenizers (gpt2kit's bpe kind)."""
        import json

        model = json.loads(hf_tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(model["vocab"], merges)

    def pieces(self, text: str) -> list[str]:
        return self.pat.findall(replace_surrogates(text))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pieces(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")

    def explain(self, text: str) -> list[dict]:
        """For each regex piece: its bytes as GPT-2 symbols, each merge (pair, rank, symbols after) in
        order, the final tokens, their raw bytes (a token may be part of a character) and ids."""
        out = []
        for piece in self.pieces(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            trace: list = []
            tokens = self.bpe(mapped, trace)
            out.append({
                "piece": piece, "symbols": list(mapped), "merges": trace, "tokens": tokens,
                "bytes": [bytes(self.byte_decoder[c] for c in t) for t in tokens], "ids": [self.encoder[t] for t in tokens],
            })
        return out
