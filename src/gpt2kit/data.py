"""Data preparation and batches: token files with a header, meta.json, parallel tokenisation.

A prepared data dir holds:
    train.bin, val.bin   header (magic, version, dtype, count) + token ids (uint16 if n_vocab <= 65536, else uint32)
    meta.json            tokenizer spec, vocab size, token counts, sources (JSON, never pickle)
    tokenizer/           the tokenizer's own files, so training can save it beside the model

Batches are drawn by a counter-based RNG: micro-batch m of iteration it comes from
Generator(seed, it, m). Resume needs no data-loader state beyond the iteration, and DDP ranks
that split the micro-batches see exactly what one process would.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import GPT2KitError
from .fileio import atomic_path, read_json, write_json_atomic

MAGIC = b"GPT2KTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, itemsize, count -> 24 bytes
DTYPES = {2: np.uint16, 4: np.uint32}
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")


# -- token files ---------------------------------------------------------------------------------

def token_dtype(n_vocab: int):
    return np.uint16 if n_vocab <= 65536 else np.uint32


def write_tokens(path: str, ids: np.ndarray, n_vocab: int) -> None:
    dtype = token_dtype(n_vocab)
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
        raise GPT2KitError(f"token id {int(ids.max())} does not fit a vocabulary of {n_vocab}; the tokenizer and data disagree")
    if ids.size and int(ids.max()) > np.iinfo(dtype).max:
        raise GPT2KitError(f"token id {int(ids.max())} overflows {np.dtype(dtype).name}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, ids.size))
            ids.astype(dtype, copy=False).tofile(f)


def read_tokens(path: str) -> np.memmap:
    """Memory-map a token file, checking magic, version, dtype and length."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
    except FileNotFoundError:
        raise GPT2KitError(f"token file not found: {path}; run `gpt2kit prepare` first") from None
    if len(head) < HEADER.size:
        raise GPT2KitError(f"{path} is too short to be a gpt2kit token file (truncated?); re-run `gpt2kit prepare`")
    magic, version, itemsize, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise GPT2KitError(f"{path} is not a gpt2kit token file (bad magic {magic!r}); re-run `gpt2kit prepare`")
    if version != VERSION:
        raise GPT2KitError(f"{path} has token-file version {version}, this gpt2kit reads {VERSION}; re-run `gpt2kit prepare`")
    if itemsize not in DTYPES:
        raise GPT2KitError(f"{path} declares a {itemsize}-byte token dtype; the file is corrupt, re-run `gpt2kit prepare`")
    if size != HEADER.size + count * itemsize:
        raise GPT2KitError(f"{path} should hold {count} tokens ({HEADER.size + count * itemsize} bytes) but has {size} bytes (truncated?); re-run `gpt2kit prepare`")
    return np.memmap(path, dtype=DTYPES[itemsize], mode="r", offset=HEADER.size, shape=(count,))


# -- reading corpora -----------------------------------------------------------------------------

def iter_documents(inputs: list[str], field: str = "text", doc_sep: str | None = None) -> Iterator[str]:
    """Documents from text files, directories (recursively, text suffixes) and JSONL files.

    doc_sep: a line (e.g. '%') that separates documents inside a text file.
    """
    paths = _expand(inputs)
    for path in paths:
        if path.endswith((".jsonl", ".jsonl.txt")):
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)[field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise GPT2KitError(f"{path}:{n} is not a JSON object with a {field!r} field; pass --field NAME") from None
                    yield str(doc)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise GPT2KitError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it first") from None
        if doc_sep is None:
            yield text
        else:
            doc: list[str] = []
            for line in text.splitlines(keepends=True):
                if line.strip() == doc_sep:
                    if "".join(doc).strip():
                        yield "".join(doc).strip("\n") + "\n"
                    doc = []
                else:
                    doc.append(line)
            if "".join(doc).strip():
                yield "".join(doc).strip("\n") + "\n"


def _expand(inputs: list[str]) -> list[str]:
    out: list[str] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise GPT2KitError(f"no files match {item!r}")
        for m in matches:
            if os.path.isdir(m):
                found = sorted(os.path.join(r, f) for r, _, fs in os.walk(m) for f in fs if f.endswith(TEXT_SUFFIXES + (".jsonl",)))
                if not found:
                    raise GPT2KitError(f"directory {m} holds no text files ({', '.join(TEXT_SUFFIXES)}, .jsonl)")
                out.extend(found)
            elif os.path.isfile(m):
                out.append(m)
            else:
                raise GPT2KitError(f"input not found: {m}")
    return out


def split_for_workers(text: str, target: int = 1 << 16) -> list[str]:
    """Cut text into ~target-char chunks at boundaries no tokenizer merges across.

    A cut goes right after a newline that sits between two non-space characters: GPT-2's
    regex (and HF's byte-level pre-tokenizer) always ends a piece there.
    """
    chunks, start = [], 0
    while len(text) - start > target:
        i = start + target
        while i < len(text) - 1 and not (text[i - 1] == "\n" and not text[i].isspace() and not text[i - 2].isspace()):
            i += 1
        if i >= len(text) - 1:
            break
        chunks.append(text[start:i])
        start = i
    chunks.append(text[start:])
    return chunks


# -- prepare -------------------------------------------------------------------------------------

_WORKER_TOK = None


def _init_worker(tok_dir: str) -> None:
    global _WORKER_TOK
    from .tokenization import load_tokenizer

    _WORKER_TOK = load_tokenizer(tok_dir)


def _encode_chunk(chunk: str) -> np.ndarray:
    return np.asarray(_WORKER_TOK.encode_ordinary(chunk), dtype=np.uint32)


@dataclass
class PrepareResult:
    out_dir: str
    n_vocab: int
    train_tokens: int
    val_tokens: int
    unknown_rate: float | None


def prepare(
    inputs: list[str],
    out_dir: str,
    tokenizer: str = "gpt2",
    *,
    val_fraction: float = 0.1,
    field: str = "text",
    doc_sep: str | None = None,
    num_proc: int = 2,
    min_freq: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """Tokenise documents (each ending with EOT where the tokenizer has one) into train/val files.

    The split is by position in the token stream: the first (1 - val_fraction) is train, as in
    nanoGPT's shakespeare_char (so tiny shakespeare gives 1,003,854 / 111,540 char tokens).
    """
    from tqdm import tqdm

    from . import tokenization
    from .tokenization import build_tokenizer

    if not 0.0 < val_fraction < 1.0:
        raise GPT2KitError(f"val fraction must be in (0, 1), got {val_fraction}")
    if num_proc < 1:
        raise GPT2KitError(f"num_proc must be >= 1, got {num_proc}")
    docs = list(iter_documents(inputs, field=field, doc_sep=doc_sep))
    if not docs or not any(docs):
        raise GPT2KitError(f"no text found in {inputs}")
    # Corpus-built vocabularies (char, word) get an <|endoftext|> id when documents are delimited
    # explicitly, so they stay apart in the token stream; kinds that load from files ignore these.
    delimited = doc_sep is not None or any(p.endswith((".jsonl", ".jsonl.txt")) for p in _expand(inputs))
    tok = build_tokenizer(tokenizer, docs, min_freq=min_freq, eot=delimited, num_proc=num_proc)
    os.makedirs(out_dir, exist_ok=True)
    tok_dir = os.path.join(out_dir, "tokenizer")
    tok.save(tok_dir)

    chunks, doc_of_chunk = [], []
    for d, doc in enumerate(docs):
        for c in split_for_workers(doc):
            chunks.append(c)
            doc_of_chunk.append(d)
    bar = tqdm(total=sum(map(len, chunks)), unit="char", unit_scale=True, desc="tokenizing", disable=not progress)
    parts: list[np.ndarray] = []
    if num_proc == 1:
        _init_worker(tok_dir)
        encoded = map(_encode_chunk, chunks)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(num_proc, _init_worker, (tok_dir,))
        # many small documents (poems, JSONL rows) go to workers in batches: one round trip each is slower than encoding it
        encoded = pool.imap(_encode_chunk, chunks, chunksize=max(1, len(chunks) // (32 * num_proc)))
    eot = tok.eot_token
    try:
        for i, ids in enumerate(encoded):
            parts.append(ids)
            bar.update(len(chunks[i]))
            last_of_doc = i + 1 == len(chunks) or doc_of_chunk[i + 1] != doc_of_chunk[i]
            if last_of_doc and eot is not None:
                parts.append(np.asarray([eot], dtype=np.uint32))
    finally:
        if num_proc > 1:
            pool.close()
            pool.join()
        bar.close()
    ids = np.concatenate(parts)
    n_train = int(len(ids) * (1.0 - val_fraction))  # nanoGPT: train = data[:int(n * 0.9)]
    n_val = len(ids) - n_train
    if n_train < 2 or n_val < 2:
        raise GPT2KitError(f"only {len(ids)} tokens: too little text to split into train and val")
    write_tokens(os.path.join(out_dir, "train.bin"), ids[:n_train], tok.n_vocab)
    write_tokens(os.path.join(out_dir, "val.bin"), ids[n_train:], tok.n_vocab)
    unknown_rate = None if tok.unk_token is None else tokenization.unknown_rate(tok, ids)
    write_json_atomic(os.path.join(out_dir, "meta.json"), {
        "gpt2kit_data_version": VERSION, "tokenizer": tok.spec() | {"kind": tok.kind}, "n_vocab": tok.n_vocab,
        "train_tokens": int(n_train), "val_tokens": int(n_val), "documents": len(docs),
        "unknown_rate": unknown_rate, "sources": [os.path.abspath(p) for p in _expand(inputs)],
    })
    return PrepareResult(out_dir, tok.n_vocab, int(n_train), int(n_val), unknown_rate)


# -- batches -------------------------------------------------------------------------------------

class TokenData:
    """A prepared data dir: memory-mapped splits and counter-based random batches."""

    def __init__(self, data_dir: str):
        self.dir = data_dir
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.exists(meta_path):
            raise GPT2KitError(f"{data_dir} is not a prepared data dir (no meta.json); run `gpt2kit prepare FILES --out {data_dir}`")
        self.meta = read_json(meta_path, "data meta")
        n_vocab = self.meta.get("n_vocab") if isinstance(self.meta, dict) else None
        if not isinstance(n_vocab, int) or isinstance(n_vocab, bool) or n_vocab < 1:
            raise GPT2KitError(f"{meta_path}: n_vocab must be a positive integer, got {n_vocab!r}; re-run `gpt2kit prepare`")
        self.n_vocab = n_vocab
        self.splits = {s: read_tokens(os.path.join(data_dir, f"{s}.bin")) for s in ("train", "val")}
        self.check_ids()

    def check_ids(self) -> None:
        """Every token id must index the vocabulary (one streaming max per split, checked up front)."""
        for s, arr in self.splits.items():
            top = int(arr.max()) if len(arr) else -1
            if top >= self.n_vocab:
                raise GPT2KitError(f"{self.dir}/{s}.bin holds token id {top} but meta.json says n_vocab={self.n_vocab}; "
                                   "the data and its tokenizer disagree, re-run `gpt2kit prepare`")

    def tokenizer(self):
        from .tokenization import load_tokenizer

        return load_tokenizer(os.path.join(self.dir, "tokenizer"))

    def check_block_size(self, block_size: int) -> None:
        for s, arr in self.splits.items():
            if len(arr) <= block_size:
                raise GPT2KitError(f"the {s} split has {len(arr)} tokens, fewer than block_size + 1 = {block_size + 1}; use a smaller --block-size or more data")

    def batch(self, split: str, batch_size: int, block_size: int, key: tuple[int, ...]):
        """(x, y) int64 arrays (B, T) from offsets drawn by Generator(key): same key, same batch."""
        data = self.splits[split]
        rng = np.random.Generator(np.random.PCG64(list(key)))
        ix = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
        rows = data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]
