"""Data preparation and batches: token files with a header, streaming sharded prepare, TokenData.

A prepared data dir holds:
    *.bin                token shards: header (magic, version, dtype, count) + token ids (uint16 if
                         n_vocab <= 65536, else uint32); train.bin + val.bin for a one-shard corpus,
                         else val_000000.bin, train_000001.bin, ... (llm.c's naming)
    meta.json            the index (shards.py): shard list, tokenizer spec, vocab size, token counts,
                         the split rule, sources (JSON, never pickle)
    tokenizer/           the tokenizer's own files, so training can save it beside the model

Batches are drawn by a counter-based RNG: micro-batch m of iteration it comes from
Generator(seed, it, m). Resume needs no data-loader state beyond the iteration, and DDP ranks
that split the micro-batches see exactly what one process would.
"""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass

import numpy as np

from .errors import GPT2KitError
from .fileio import atomic_path, write_json_atomic
from .shards import DATA_VERSION, INDEX, SHARD_TOKENS, SplitRule, shard_name

MAGIC = b"GPT2KTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, itemsize, count -> 24 bytes
DTYPES = {2: np.uint16, 4: np.uint32}


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


# -- prepare -------------------------------------------------------------------------------------

_WORKER_TOK = None
BATCH_CHARS = 1 << 20  # text per worker task
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


def _encode_batch(batch: list[tuple[str, bool]], eot: int | None) -> list[np.ndarray]:
    """Each piece's ids, with eot appended to pieces that end a document."""
    try:
        return [np.asarray(_WORKER_TOK.encode_ordinary(text) + ([eot] if end and eot is not None else []), dtype=np.uint32)
                for text, end in batch]
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
    shards: int = 2


def prepare(
    inputs: list[str],
    out_dir: str,
    tokenizer: str = "gpt2",
    *,
    val_fraction: float = 0.1,
    val_tokens: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    field: str = "text",
    doc_sep: str | None = None,
    dataset: str | None = None,
    name: str | None = None,
    split: str = "train",
    num_proc: int = 2,
    min_freq: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Tokenise documents (each ending with EOT where the tokenizer has one) into token shards.

    Input is streamed (sources.py), tokenised by num_proc processes in order, and cut into shards
    of shard_tokens tokens; memory holds one shard, whatever the input size. The split
    (shards.SplitRule, recorded in meta.json):
        val_tokens=N        the first N tokens are val (shards of at most shard_tokens), the rest train
        otherwise           more than one shard: the first shard is val (llm.c); a corpus that fits in one
                            shard: the last val_fraction of its tokens is val (nanoGPT: train = data[:int(n * 0.9)]),
                            written as train.bin / val.bin (tiny shakespeare gives 1,003,854 / 111,540 char tokens)
    Shards are built in OUT.partial, each written atomically with the progress that produced it;
    the finished dir replaces out_dir whole (fileio.atomic_dir). A failed run removes OUT.partial and
    leaves an existing out_dir as it was; a killed one (kill -9, Ctrl-C) continues with resume=True
    from its last complete shard, ending byte-identical to an uninterrupted run.
    """
    from .fileio import check_writable, write_errors
    from .sources import open_corpus

    rule = SplitRule.make(val_fraction, val_tokens, shard_tokens)
    num_proc = _cap_num_proc(num_proc)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GPT2KitError(f"out_dir {out_dir} is a file; give a directory path for the prepared data")
    check_writable(out_dir)
    corpus = open_corpus(list(inputs), field=field, doc_sep=doc_sep, dataset=dataset, name=name, split=split)
    # what the token stream depends on: a resume must match it (the piece sizes fix where the stream resumes)
    settings = {"tokenizer": tokenizer, "min_freq": min_freq, **rule.to_dict(), "field": field, "doc_sep": doc_sep,
                "sources": corpus.sources, "source_bytes": corpus.file_sizes(), "pieces": corpus.piece_sizes()}
    partial = os.path.normpath(out_dir) + ".partial"
    state = _resume_state(partial, settings) if resume else None
    with write_errors(out_dir):
        # built before anything is written: its errors leave no trace
        tok = None if state is not None else _build_tokenizer(tokenizer, corpus, min_freq, num_proc)
        try:
            if tok is not None:
                shutil.rmtree(partial, ignore_errors=True)
                os.makedirs(os.path.join(partial, "tokenizer"))
                tok.save(os.path.join(partial, "tokenizer"))
            if state is not None and state["progress"] is None:
                result = _result(out_dir, state["meta"])
            else:
                writer = _ShardWriter(partial, settings, rule, state)
                _tokenise_into(writer, corpus, num_proc, progress)
                result = writer.finish(out_dir)
            _swap_in(partial, out_dir)
        except (KeyboardInterrupt, SystemExit):
            raise  # OUT.partial stays for resume
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return result


def _result(out_dir: str, meta: dict) -> PrepareResult:
    return PrepareResult(out_dir, meta["n_vocab"], meta["train_tokens"], meta["val_tokens"], meta["unknown_rate"], len(meta["shards"]))


def _build_tokenizer(spec: str, corpus, min_freq: int, num_proc: int):
    from .tokenization import build_tokenizer

    # Corpus-built vocabularies (char, word) read the corpus once more, and get an <|endoftext|> id when documents
    # are delimited explicitly, so they stay apart in the token stream; kinds that load from files ignore these.
    texts = (text for text, _ in corpus.pieces())
    return build_tokenizer(spec, texts, min_freq=min_freq, eot=corpus.delimited, num_proc=num_proc)


def _resume_state(partial: str, settings: dict) -> dict | None:
    """The progress of an interrupted prepare in `partial` (None: there is none), checked against settings."""
    from .shards import read_index

    if not os.path.exists(os.path.join(partial, INDEX)):  # none, or killed before its first record: start over
        return None
    try:
        meta = read_index(partial, complete=False).meta
        saved, shards = meta["settings"], meta["shards"]
        progress = None if meta.get("complete") else meta["progress"]  # complete: killed just before the swap
    except (GPT2KitError, KeyError, TypeError) as e:
        raise GPT2KitError(f"cannot resume from {partial}: its meta.json is corrupt ({str(e)[:120]}); "
                           "prepare again without resume to start over") from None
    for key, value in settings.items():
        if saved.get(key) != value:
            raise GPT2KitError(f"cannot resume {partial}: it was prepared with {key}={saved.get(key)!r}, not {value!r}; "
                               "resume with the same settings, or prepare again without resume to start over")
    for s in shards:  # each listed shard must be whole (it was written before its progress)
        if len(read_tokens(os.path.join(partial, s["file"]))) != s["tokens"]:
            raise GPT2KitError(f"cannot resume {partial}: {s['file']} does not hold the {s['tokens']} tokens its meta.json says; "
                               "prepare again without resume to start over")
    return {"progress": progress, "shards": shards, "meta": meta}


def _swap_in(partial: str, out_dir: str) -> None:
    """Move the finished OUT.partial to out_dir in one atomic swap; stale shard files of an older out_dir go."""
    from .fileio import _link_or_copy, atomic_dir
    from .shards import is_shard_name

    old = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    with atomic_dir(out_dir, owns=DATA_FILES + tuple(n for n in old if is_shard_name(n))) as tmp:
        shutil.copytree(partial, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)  # hard links: no data copied
    shutil.rmtree(partial, ignore_errors=True)


def _cap_num_proc(num_proc: int) -> int:
    """num_proc, at most the usable CPU count (more workers only cost memory), saying so when capped."""
    import sys

    if num_proc < 1:
        raise GPT2KitError(f"num_proc must be >= 1, got {num_proc}")
    cpus = usable_cpus()
    if num_proc > cpus:
        print(f"note: num_proc {num_proc} is more than the {cpus} usable CPUs; using {cpus}", file=sys.stderr)
    return min(num_proc, cpus)


def _tokenise_into(writer: "_ShardWriter", corpus, num_proc: int, progress: bool) -> None:
    """Feed every piece's ids, in order, to writer, skipping what a resumed writer already holds."""
    import itertools

    from tqdm import tqdm

    start, skip = writer.resume_point
    pieces = itertools.islice(corpus.pieces(), start, None)
    bar = tqdm(unit="char", unit_scale=True, desc="tokenizing", disable=not progress)
    try:
        for i, ((text, end), ids) in enumerate(_encode_pieces(pieces, os.path.join(writer.dir, "tokenizer"), writer.eot, num_proc), start):
            offset = skip if i == start else 0
            writer.add(ids[offset:], i, offset, end)
            bar.update(len(text))
    finally:
        bar.close()


def _encode_pieces(pieces, tok_dir: str, eot: int | None, num_proc: int):
    """(piece, its ids) in order, encoded by num_proc processes with a bounded number of batches in flight.

    Any failure, a worker's BaseException or a worker killed outright included, becomes one
    GPT2KitError: concurrent.futures reports both (multiprocessing.Pool loses such a task and waits forever).
    """
    from collections import deque

    pool = None
    try:
        if num_proc == 1:
            _init_worker(tok_dir)
            for batch in _batches(pieces):
                yield from zip(batch, _encode_batch(batch, eot))
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(num_proc, mp.get_context("spawn" if os.name == "nt" else "fork"), _init_worker, (tok_dir,))
        in_flight: deque = deque()
        for batch in _batches(pieces):
            in_flight.append((batch, pool.submit(_encode_batch, batch, eot)))
            if len(in_flight) > 2 * num_proc:  # bounded: memory does not grow with the input
                done, fut = in_flight.popleft()
                yield from zip(done, fut.result())
        while in_flight:
            done, fut = in_flight.popleft()
            yield from zip(done, fut.result())
    except (GPT2KitError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:
        msg = (str(e).splitlines() or [""])[0][:200]
        raise GPT2KitError(f"tokenizing failed ({type(e).__name__}: {msg}); the input cannot be encoded by this tokenizer") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _batches(pieces):
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _ShardWriter:
    """Cuts the token stream into shards as the split rule says; each shard is written atomically,
    then meta.json (complete: false) records the progress it reached: (pieces consumed, tokens of
    the next piece already written, documents ended)."""

    def __init__(self, directory: str, settings: dict, rule, state: dict | None):
        from .tokenization import load_tokenizer

        self.dir, self.settings, self.rule = directory, settings, rule
        self.tok = load_tokenizer(os.path.join(directory, "tokenizer"))
        self.eot = self.tok.eot_token
        self.shards: list[dict] = list(state["shards"]) if state else []
        p = state["progress"] if state else {"pieces": 0, "skip": 0, "documents": 0}
        self.resume_point = (p["pieces"], p["skip"])
        self.documents = p["documents"]
        self.buf = np.empty(rule.shard_tokens, dtype=token_dtype(self.tok.n_vocab))  # pages are touched as they fill
        self.n = 0
        self._write_meta(p)

    @property
    def written(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def add(self, ids: np.ndarray, piece: int, offset: int, ends_doc: bool) -> None:
        pos = 0
        while pos < len(ids):
            cap = self.rule.capacity(len(self.shards), self.written)
            if self.n == cap:  # full, and more tokens follow: write it
                self._flush(self.rule.split_of(len(self.shards), self.written), {"pieces": piece, "skip": offset + pos,
                                                                                 "documents": self.documents})
                continue
            take = min(len(ids) - pos, cap - self.n)
            self.buf[self.n:self.n + take] = ids[pos:pos + take]
            self.n, pos = self.n + take, pos + take
        self.documents += ends_doc

    def _flush(self, split: str, progress: dict | None, name: str | None = None, ids: np.ndarray | None = None) -> None:
        """Write the buffer (or `ids`) as the next shard, then the progress that follows it (None: finish() records it)."""
        from_buf = ids is None
        ids = self.buf[:self.n] if from_buf else ids
        name = name or shard_name(split, len(self.shards))
        write_tokens(os.path.join(self.dir, name), ids, self.tok.n_vocab)
        unk = self.tok.unk_token
        self.shards.append({"file": name, "split": split, "tokens": int(len(ids)), "max_id": int(ids.max()) if len(ids) else 0,
                            "unknown": 0 if unk is None else int(np.count_nonzero(ids == unk))})
        if from_buf:
            self.n = 0
        if progress is not None:
            self._write_meta(progress)

    def finish(self, out_dir: str) -> PrepareResult:
        """The last shards, then the complete meta.json (a kill before it resumes from the last progress)."""
        if not self.shards and self.rule.one_shard_split:  # it all fits in one shard: nanoGPT's split
            whole, n_train = self.buf[:self.n], self.rule.train_part(self.n)
            self._flush("train", None, "train.bin", whole[:n_train])
            self._flush("val", None, "val.bin", whole[n_train:])
        elif self.n:
            self._flush(self.rule.split_of(len(self.shards), self.written), None)
        totals = {s: sum(x["tokens"] for x in self.shards if x["split"] == s) for s in ("train", "val")}
        self.rule.check_totals(totals["train"], totals["val"])
        unknown = sum(x["unknown"] for x in self.shards)
        rate = None if self.tok.unk_token is None else unknown / max(1, sum(totals.values()))
        return _result(out_dir, self._write_meta(None, unknown_rate=rate))

    def _write_meta(self, progress: dict | None, unknown_rate: float | None = None) -> dict:
        """meta.json, the data dir's index (shards.py): `progress` while in progress, None when complete."""
        totals = {s: sum(x["tokens"] for x in self.shards if x["split"] == s) for s in ("train", "val")}
        meta = {
            "gpt2kit_data_version": DATA_VERSION, "complete": progress is None,
            "tokenizer": self.tok.spec() | {"kind": self.tok.kind}, "n_vocab": self.tok.n_vocab,
            "train_tokens": totals["train"], "val_tokens": totals["val"], "documents": self.documents,
            "unknown_rate": unknown_rate, "sources": self.settings["sources"], "split_rule": self.rule.describe(),
            "shard_tokens": self.rule.shard_tokens, "settings": self.settings, "shards": self.shards,
        }
        if progress is not None:
            meta["progress"] = progress
        write_json_atomic(os.path.join(self.dir, INDEX), meta)
        return meta


# -- batches -------------------------------------------------------------------------------------

class TokenData:
    """A prepared data dir (or its meta.json): the shards of each split memory-mapped, and counter-based
    random batches across them.

    Offsets are drawn uniformly over every window of block_size + 1 tokens that lies inside one shard:
    one integer per row from Generator(key) over the split's windows, mapped to (shard, offset). With one
    shard per split this is exactly the draw of single-file gpt2kit, so old runs resume unchanged.
    """

    def __init__(self, data: str):
        from .shards import read_index

        self.index = read_index(data)
        self.dir, self.meta, self.n_vocab = self.index.dir, self.index.meta, self.index.n_vocab
        self.splits: dict[str, list[np.ndarray]] = {}
        for split in ("train", "val"):
            shards = self.index.split(split)
            if not shards:
                raise GPT2KitError(f"{self.dir} has no {split} shards; re-run `gpt2kit prepare`")
            self.splits[split] = [self._open(s) for s in shards]
        self.check_ids()

    def _open(self, shard) -> np.memmap:
        arr = read_tokens(self.index.path(shard))
        if shard.tokens is not None and len(arr) != shard.tokens:
            raise GPT2KitError(f"{self.index.path(shard)} holds {len(arr)} tokens but meta.json says {shard.tokens}; "
                               "the data dir is inconsistent, re-run `gpt2kit prepare`")
        return arr

    def check_ids(self) -> None:
        """Every token id must index the vocabulary: the max prepare recorded per shard, else one streaming max."""
        for shard in self.index.shards:
            top = shard.max_id
            if top is None:
                arr = self.splits[shard.split][self.index.split(shard.split).index(shard)]
                top = int(arr.max()) if len(arr) else -1
            if top >= self.n_vocab:
                raise GPT2KitError(f"{self.dir}/{shard.file} holds token id {top} but meta.json says n_vocab={self.n_vocab}; "
                                   "the data and its tokenizer disagree, re-run `gpt2kit prepare`")

    def tokenizer(self):
        from .tokenization import load_tokenizer

        return load_tokenizer(os.path.join(self.dir, "tokenizer"))

    def check_block_size(self, block_size: int) -> None:
        for s, shards in self.splits.items():
            longest = max(len(a) for a in shards)
            if longest <= block_size:
                what = f"the {s} split has {longest} tokens" if len(shards) == 1 else f"the longest {s} shard has {longest} tokens"
                raise GPT2KitError(f"{what}, fewer than block_size + 1 = {block_size + 1}; use a smaller block_size= or more data")

    def batch(self, split: str, batch_size: int, block_size: int, key: tuple[int, ...]):
        """(x, y) int64 arrays (B, T) from windows drawn by Generator(key): same key, same batch."""
        shards = self.splits[split]
        windows = np.array([max(0, len(a) - block_size) for a in shards], dtype=np.int64)  # window starts per shard
        ends = np.cumsum(windows)
        rng = np.random.Generator(np.random.PCG64(list(key)))
        ix = rng.integers(0, ends[-1], size=batch_size)  # (B,)
        which = np.searchsorted(ends, ix, side="right")
        starts = ix - (ends[which] - windows[which])
        rows = np.stack([shards[k][o:o + block_size + 1] for k, o in zip(which, starts)]).astype(np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]
