"""The index of a prepared data dir (meta.json): which token files hold which split. The one reader.

A prepared data dir holds token files (data.py's GPT2KTOK format), tokenizer/ and meta.json:

    version 2 (streaming prepare)   meta.json lists its shards: [{"file", "split", "tokens", "max_id"}],
                                    in stream order, with the tokenizer spec, n_vocab, the split rule
                                    and the sources. A corpus of one shard is train.bin + val.bin
                                    (nanoGPT's layout); larger ones are val_000000.bin,
                                    train_000001.bin, ... (llm.c's naming).
    version 1 (older gpt2kit)       meta.json without "shards": train.bin and val.bin.

A prepare in progress keeps `complete: false` in the meta.json of its OUT.partial dir.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import GPT2KitError
from .fileio import read_json

INDEX = "meta.json"
DATA_VERSION = 2
SPLITS = ("train", "val")
_SHARD_NAME = re.compile(r"(train|val)(_\d{6})?\.bin")


def shard_name(split: str, k: int | None) -> str:
    """File name of shard k of the stream (None: the single-shard layout's train.bin / val.bin)."""
    return f"{split}.bin" if k is None else f"{split}_{k:06d}.bin"


def is_shard_name(name: str) -> bool:
    return _SHARD_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Shard:
    file: str  # a name inside the data dir
    split: str
    tokens: int | None  # None: unknown (version 1), the file's header says
    max_id: int | None  # the largest token id, recorded by prepare (None: unknown, scan the file)


@dataclass
class DataIndex:
    dir: str
    meta: dict
    n_vocab: int
    shards: list[Shard]

    def split(self, split: str) -> list[Shard]:
        return [s for s in self.shards if s.split == split]

    def path(self, shard: Shard) -> str:
        return os.path.join(self.dir, shard.file)


def index_path(data: str) -> str:
    """meta.json of a data dir, or `data` itself when it names the index file."""
    return data if os.path.basename(data) == INDEX and not os.path.isdir(data) else os.path.join(data, INDEX)


def read_index(data: str, *, complete: bool = True) -> DataIndex:
    """The index of a data dir (or of its meta.json), checked; complete=False also reads a prepare in progress."""
    path = index_path(data)
    if not os.path.exists(path):
        if not os.path.exists(data):
            raise GPT2KitError(f"data not found: {data}; run `gpt2kit prepare FILES --out {data}` first")
        raise GPT2KitError(f"{data} is not a prepared data dir (no {INDEX}); run `gpt2kit prepare FILES --out {data}`")
    meta = read_json(path, "data meta")
    if not isinstance(meta, dict):
        raise GPT2KitError(f"{path} should be a JSON object, got {type(meta).__name__}; re-run `gpt2kit prepare`")
    n_vocab = meta.get("n_vocab")
    if not isinstance(n_vocab, int) or isinstance(n_vocab, bool) or n_vocab < 1:
        raise GPT2KitError(f"{path}: n_vocab must be a positive integer, got {n_vocab!r}; re-run `gpt2kit prepare`")
    if complete and meta.get("complete") is False:
        raise GPT2KitError(f"{os.path.dirname(path)} is an interrupted prepare; finish it by running the same prepare "
                           "with resume=True (CLI: --resume)")
    shards = _shards(meta, path) if "shards" in meta else [Shard(f"{s}.bin", s, None, None) for s in SPLITS]
    return DataIndex(os.path.dirname(path), meta, n_vocab, shards)


def _shards(meta: dict, path: str) -> list[Shard]:
    raw = meta["shards"]
    out = []
    for i, s in enumerate(raw if isinstance(raw, list) else [None]):
        ok = (isinstance(s, dict) and isinstance(s.get("file"), str) and is_shard_name(s["file"]) and s.get("split") in SPLITS
              and _count(s.get("tokens")) and (s.get("max_id") is None or _count(s.get("max_id"))))
        if not ok:
            raise GPT2KitError(f"{path}: shard entry {i} should be {{\"file\": \"train_000001.bin\", \"split\": \"train\", "
                               f"\"tokens\": N, \"max_id\": N}}, got {str(s)[:80]}; the index is corrupt, re-run `gpt2kit prepare`")
        out.append(Shard(s["file"], s["split"], s["tokens"], s.get("max_id")))
    return out


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# -- the split rule (prepare cuts the stream by it; meta.json records it) ------------------------------

SHARD_TOKENS = 100_000_000  # llm.c's fineweb.py


@dataclass(frozen=True)
class SplitRule:
    """Which tokens of the stream are validation:
    val_tokens=N   the first N tokens (in shards of at most shard_tokens), the rest train;
    otherwise      more than one shard: the first shard (llm.c); one shard: its last val_fraction (nanoGPT)."""

    shard_tokens: int
    val_tokens: int | None
    val_fraction: float

    @classmethod
    def make(cls, val_fraction: float, val_tokens: int | None, shard_tokens: int) -> "SplitRule":
        if not 0.0 < val_fraction < 1.0:
            raise GPT2KitError(f"val fraction must be in (0, 1), got {val_fraction}")
        if not _count(shard_tokens) or shard_tokens < 2:
            raise GPT2KitError(f"shard_tokens must be an integer >= 2, got {shard_tokens!r}")
        if val_tokens is not None and (not _count(val_tokens) or val_tokens < 2):
            raise GPT2KitError(f"val_tokens must be an integer >= 2, got {val_tokens!r}")
        return cls(shard_tokens, val_tokens, val_fraction)

    @property
    def one_shard_split(self) -> bool:
        return self.val_tokens is None

    def capacity(self, k: int, written: int) -> int:
        """Tokens shard k holds, `written` tokens having gone into shards 0..k-1."""
        if self.val_tokens is not None and written < self.val_tokens:
            return min(self.shard_tokens, self.val_tokens - written)
        return self.shard_tokens

    def split_of(self, k: int, written: int) -> str:
        if self.val_tokens is not None:
            return "val" if written < self.val_tokens else "train"
        return "val" if k == 0 else "train"

    def train_part(self, n: int) -> int:
        """Train tokens of a one-shard corpus of n tokens (nanoGPT: train = data[:int(n * 0.9)])."""
        n_train = int(n * (1.0 - self.val_fraction))
        if n_train < 2 or n - n_train < 2:
            raise GPT2KitError(f"only {n} tokens: too little text to split into train and val")
        return n_train

    def check_totals(self, train: int, val: int) -> None:
        if self.val_tokens is not None and (val < self.val_tokens or train < 2):
            raise GPT2KitError(f"only {train + val} tokens: too few for val_tokens={self.val_tokens} and a train split; "
                               "use a smaller val_tokens")
        if train < 2 or val < 2:
            raise GPT2KitError(f"only {train + val} tokens: the first shard ({val} tokens) is val and {train} are left for train; "
                               "use a larger shard_tokens, or set val_tokens")

    def to_dict(self) -> dict:
        return {"shard_tokens": self.shard_tokens, "val_tokens": self.val_tokens, "val_fraction": self.val_fraction}

    def describe(self) -> str:
        if self.val_tokens is not None:
            return f"the first {self.val_tokens:,} tokens are val, the rest train"
        return (f"one shard: the last {self.val_fraction:g} of the tokens are val (nanoGPT); "
                "more than one: the first shard is val (llm.c)")
