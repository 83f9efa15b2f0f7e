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
from .fileio import atomic_dir, atomic_path, read_json, write_json_atomic

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
            f.write(np.ascontiguousarray(ids, dtype=dtype).data)  # not tofile(): its OSError loses the errno (ENOSPC)


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
                        raise GPT2KitError(f"{path}:{n} is not a JSON object with a {field!r} field; pass field=NAME") from None
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


# -- prepare -------------------------------------------------------------------------------------

_WORKER_TOK = None
WORKER_CHUNK_CHARS = 1 << 16
DATA_FILES = ("train.bin", "val.bin", "meta.json", "tokenizer")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_worker(tok_dir: str) -> None:
    global _WORKER_TOK
    from .tokenization import load_tokenizer

    _WORKER_TOK = load_tokenizer(tok_dir)


def _encode_chunk(chunk: str) -> np.ndarray:
    try:
        return np.asarray(_WORKER_TOK.encode_ordinary(chunk), dtype=np.uint32)
    except Exception:
        raise
    except BaseException as e:  # e.g. a Rust panic (PanicException): send back a plain, picklable error
        raise RuntimeError(f"{type(e).__name__}: {e}") from None


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
    out_dir is built in a temp sibling and swapped in whole (fileio.atomic_dir): a failed or
    killed run leaves an existing data dir as it was.
    """
    from . import tokenization
    from .tokenization import build_tokenizer

    if not 0.0 < val_fraction < 1.0:
        raise GPT2KitError(f"val fraction must be in (0, 1), got {val_fraction}")
    num_proc = _cap_num_proc(num_proc)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GPT2KitError(f"out_dir {out_dir} is a file; give a directory path for the prepared data")
    docs = list(iter_documents(inputs, field=field, doc_sep=doc_sep))
    if not docs or not any(docs):
        raise GPT2KitError(f"no text found in {inputs}")
    # Corpus-built vocabularies (char, word) get an <|endoftext|> id when documents are delimited
    # explicitly, so they stay apart in the token stream; kinds that load from files ignore these.
    delimited = doc_sep is not None or any(p.endswith((".jsonl", ".jsonl.txt")) for p in _expand(inputs))
    tok = build_tokenizer(tokenizer, docs, min_freq=min_freq, eot=delimited, num_proc=num_proc)
    with atomic_dir(out_dir, owns=DATA_FILES) as tmp:
        tok_dir = os.path.join(tmp, "tokenizer")
        tok.save(tok_dir)
        ids = _encode_documents(docs, tok_dir, tok.eot_token, num_proc, progress)
        n_train = int(len(ids) * (1.0 - val_fraction))  # nanoGPT: train = data[:int(n * 0.9)]
        n_val = len(ids) - n_train
        if n_train < 2 or n_val < 2:
            raise GPT2KitError(f"only {len(ids)} tokens: too little text to split into train and val")
        write_tokens(os.path.join(tmp, "train.bin"), ids[:n_train], tok.n_vocab)
        write_tokens(os.path.join(tmp, "val.bin"), ids[n_train:], tok.n_vocab)
        unknown_rate = None if tok.unk_token is None else tokenization.unknown_rate(tok, ids)
        write_json_atomic(os.path.join(tmp, "meta.json"), {
            "gpt2kit_data_version": VERSION, "tokenizer": tok.spec() | {"kind": tok.kind}, "n_vocab": tok.n_vocab,
            "train_tokens": int(n_train), "val_tokens": int(n_val), "documents": len(docs),
            "unknown_rate": unknown_rate, "sources": [os.path.abspath(p) for p in _expand(inputs)],
        })
    return PrepareResult(out_dir, tok.n_vocab, int(n_train), int(n_val), unknown_rate)


def _cap_num_proc(num_proc: int) -> int:
    """num_proc, at most the usable CPU count (more workers only cost memory), saying so when capped."""
    import sys

    if num_proc < 1:
        raise GPT2KitError(f"num_proc must be >= 1, got {num_proc}")
    cpus = usable_cpus()
    if num_proc > cpus:
        print(f"note: num_proc {num_proc} is more than the {cpus} usable CPUs; using {cpus}", file=sys.stderr)
    return min(num_proc, cpus)


def _encode_documents(docs: list[str], tok_dir: str, eot: int | None, num_proc: int, progress: bool) -> np.ndarray:
    """All documents' ids in order, each followed by eot (if any), encoded by num_proc processes.

    Any failure, a worker's BaseException or a worker killed outright included, becomes one
    GPT2KitError: concurrent.futures reports both (multiprocessing.Pool loses such a task and waits forever).
    """
    from tqdm import tqdm

    from .tokenization.corpus import chunk_text

    chunks, doc_of_chunk = [], []
    for d, doc in enumerate(docs):
        for c in chunk_text(doc, WORKER_CHUNK_CHARS):
            chunks.append(c)
            doc_of_chunk.append(d)
    bar = tqdm(total=sum(map(len, chunks)), unit="char", unit_scale=True, desc="tokenizing", disable=not progress)
    parts: list[np.ndarray] = []
    pool = None
    try:
        if num_proc == 1:
            _init_worker(tok_dir)
            encoded = map(_encode_chunk, chunks)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(num_proc, mp.get_context("spawn" if os.name == "nt" else "fork"), _init_worker, (tok_dir,))
            # many small documents (poems, JSONL rows) go to workers in batches: one round trip each is slower than encoding it
            encoded = pool.map(_encode_chunk, chunks, chunksize=max(1, len(chunks) // (32 * num_proc)))
        for i, ids in enumerate(encoded):
            parts.append(ids)
            bar.update(len(chunks[i]))
            last_of_doc = i + 1 == len(chunks) or doc_of_chunk[i + 1] != doc_of_chunk[i]
            if last_of_doc and eot is not None:
                parts.append(np.asarray([eot], dtype=np.uint32))
    except (GPT2KitError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        msg = (str(e).splitlines() or [""])[0][:200]
        raise GPT2KitError(f"tokenizing failed ({type(e).__name__}: {msg}); the input cannot be encoded by this tokenizer") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return np.concatenate(parts)


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
                raise GPT2KitError(f"the {s} split has {len(arr)} tokens, fewer than block_size + 1 = {block_size + 1}; use a smaller block_size= or more data")

    def batch(self, split: str, batch_size: int, block_size: int, key: tuple[int, ...]):
        """(x, y) int64 arrays (B, T) from offsets drawn by Generator(key): same key, same batch."""
        data = self.splits[split]
        rng = np.random.Generator(np.random.PCG64(list(key)))
        ix = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
        rows = data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]
