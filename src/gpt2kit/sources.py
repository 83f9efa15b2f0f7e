"""Where prepare's text comes from: text files, directories, globs, JSONL, Parquet, Hugging Face datasets.

Every source is read as a stream of pieces: (text of about PIECE_CHARS at most, does it end a
document). Memory stays bounded whatever the input size: text files are read in blocks and cut
only where tokenizers never merge across (corpus.last_safe_cut), tables in record batches,
hub datasets streamed. The stream is the same on every run, so a resumed prepare skips the
pieces it has already written and tokenises the rest.

Inputs (in order):
    FILE.txt/.md/...   one document per file (or several, split at doc_sep lines)
    FILE.jsonl         one document per line: the JSON object's `field`
    FILE.parquet       one document per row: the column `field` (pyarrow, record batches)
    DIR                a dataset saved by datasets' save_to_disk (load_from_disk), else its text,
                       JSONL and Parquet files, recursively, sorted
    GLOB               the matching paths, sorted
    dataset=NAME       a hub dataset (name=CONFIG, split=SPLIT), streamed; or a builder
                       (parquet, json, text, csv) reading the inputs as its data_files
"""
from __future__ import annotations

import codecs
import contextlib
import dataclasses
import glob
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import GPT2KitError
from .tokenization.corpus import chunk_text, last_safe_cut

PIECE_CHARS = 1 << 16
READ_BYTES = 1 << 20
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
TABLE_SUFFIXES = (".jsonl", ".parquet")
HF_BUILDERS = ("parquet", "json", "text", "csv")
Piece = tuple[str, bool]  # (text, ends a document)


@dataclass
class Corpus:
    """An opened input: checked up front (paths, extras, columns, the hub) so that bad input fails
    before prepare writes anything. pieces() may be called more than once (corpus-built vocabularies)."""

    items: list[tuple[str, object]]  # (kind, path or opened dataset)
    field: str = "text"
    doc_sep: str | None = None
    sources: list[str] = dataclasses.field(default_factory=list)

    @property
    def delimited(self) -> bool:
        """Documents are explicit (JSONL, tables, doc_sep), so char/word vocabularies get an end-of-text id."""
        return self.doc_sep is not None or any(kind != "text" for kind, _ in self.items)

    def file_sizes(self) -> list[int]:
        """Bytes of each input file: a resume refuses inputs that changed size since the interrupted run."""
        return [os.path.getsize(what) for _, what in self.items if isinstance(what, str) and os.path.isfile(what)]

    @staticmethod
    def piece_sizes() -> list[int]:
        """The sizes that fix where pieces end: a resumed prepare must cut its input the same way."""
        return [PIECE_CHARS, READ_BYTES]

    def pieces(self) -> Iterator[Piece]:
        for kind, what in self.items:
            if kind == "text" and self.doc_sep is None:
                yield from _text_file_pieces(what)
            else:
                for doc in READERS[kind](self, what):
                    yield from _mark_last(chunk_text(doc, PIECE_CHARS))


def open_corpus(inputs: list[str], field: str = "text", doc_sep: str | None = None,
                dataset: str | None = None, name: str | None = None, split: str = "train") -> Corpus:
    """Expand and check every input; open a dataset (local or hub) so that an offline hub fails here."""
    if dataset in HF_BUILDERS:
        files = expand(inputs, suffixes=None)
        ds = _hf_load(dataset, None, split, data_files=files)
        return Corpus([("hf", ds)], field, doc_sep, [f"{dataset}:{os.path.abspath(f)}" for f in files])
    items = [_item(p) for p in expand(inputs)]
    sources = [os.path.abspath(p) for _, p in items]
    if dataset is not None:
        if os.path.isdir(dataset) and _is_saved_dataset(dataset):
            items.append(("hfdisk", dataset))
            sources.append(os.path.abspath(dataset))
        else:
            items.append(("hf", _hf_load(dataset, name, split)))
            sources.append(f"hf:{dataset}" + (f"/{name}" if name else "") + f":{split}")
    if not items:
        raise GPT2KitError("no input: give files, directories or globs, or dataset=NAME")
    items = [(kind, _open_table(kind, what, field, split)) for kind, what in items]
    return Corpus(items, field, doc_sep, sources)


# -- inputs ----------------------------------------------------------------------------------------

def expand(inputs: Iterable[str], suffixes: tuple[str, ...] | None = TEXT_SUFFIXES + TABLE_SUFFIXES) -> list[str]:
    """Files (and saved-dataset dirs) named by inputs: globs sorted, directories walked for `suffixes`."""
    out: list[str] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise GPT2KitError(f"no files match {item!r}")
        for m in matches:
            if os.path.isdir(m) and suffixes is not None and _is_saved_dataset(m):
                out.append(m)
            elif os.path.isdir(m):
                found = sorted(os.path.join(r, f) for r, _, fs in os.walk(m) for f in fs if suffixes is None or f.endswith(suffixes))
                if not found:
                    raise GPT2KitError(f"directory {m} holds no input files ({', '.join(suffixes or ('any',))})")
                out.extend(found)
            elif os.path.isfile(m):
                out.append(m)
            else:
                raise GPT2KitError(f"input not found: {m}")
    return out


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _item(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        return "hfdisk", path
    if path.endswith((".jsonl", ".jsonl.txt")):
        return "jsonl", path
    if path.endswith(".parquet"):
        return "parquet", path
    return "text", path


# -- text files ------------------------------------------------------------------------------------

def _read_blocks(path: str) -> Iterator[str]:
    """The file's text in ~READ_BYTES blocks, decoded as UTF-8 with universal newlines (as open() does)."""
    dec = codecs.getincrementaldecoder("utf-8")()
    fed, held = 0, ""
    with open(path, "rb") as f:
        while True:
            raw = f.read(READ_BYTES)
            pending = len(dec.getstate()[0])
            try:
                text = held + dec.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise GPT2KitError(f"{path} is not UTF-8 text ({e.reason} at byte {fed - pending + e.start}); convert it first") from None
            fed += len(raw)
            held = "\r" if raw and text.endswith("\r") else ""  # it may start a \r\n split across blocks
            text = text[: len(text) - len(held)]
            yield text.replace("\r\n", "\n").replace("\r", "\n")
            if not raw:
                return


def _text_file_pieces(path: str) -> Iterator[Piece]:
    """One document: the whole file, as pieces cut at safe points, read block by block."""
    buf = ""
    for block in _read_blocks(path):
        lo = max(0, len(buf) - 2)
        buf += block
        cut = last_safe_cut(buf, lo) if len(buf) > PIECE_CHARS else None
        if cut is not None:
            for c in chunk_text(buf[:cut], PIECE_CHARS):
                yield c, False
            buf = buf[cut:]
    yield from _mark_last(chunk_text(buf, PIECE_CHARS))


def _text_docs(corpus: Corpus, path: str) -> Iterator[str]:
    """Documents of a text file split at lines equal to doc_sep (splitlines' line ends, as before)."""
    doc: list[str] = []
    for block_line in _lines(path):
        for line in block_line.splitlines(keepends=True):
            if line.strip() == corpus.doc_sep:
                if "".join(doc).strip():
                    yield "".join(doc).strip("\n") + "\n"
                doc = []
            else:
                doc.append(line)
    if "".join(doc).strip():
        yield "".join(doc).strip("\n") + "\n"


def _lines(path: str) -> Iterator[str]:
    rest = ""
    for block in _read_blocks(path):
        lines = (rest + block).split("\n")
        rest = lines.pop()
        for line in lines:
            yield line + "\n"
    if rest:
        yield rest


def _mark_last(it: Iterable[str]) -> Iterator[Piece]:
    it = iter(it)
    prev = next(it, None)
    for x in it:
        yield prev, False
        prev = x
    if prev is not None:
        yield prev, True


# -- tables ----------------------------------------------------------------------------------------

def _jsonl_docs(corpus: Corpus, path: str) -> Iterator[str]:
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)[corpus.field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GPT2KitError(f"{path}:{n} is not a JSON object with a {corpus.field!r} field; pass field=NAME") from None
        yield str(doc)


def _parquet_docs(corpus: Corpus, pf) -> Iterator[str]:
    for batch in pf.iter_batches(batch_size=1024, columns=[corpus.field]):
        yield from (str(v) for v in batch.column(0).to_pylist() if v is not None)


def _dataset_docs(corpus: Corpus, ds) -> Iterator[str]:
    try:
        for row in ds:
            v = row[corpus.field]
            if v is not None:
                yield str(v)
    except KeyError:
        raise GPT2KitError(f"the dataset has no {corpus.field!r} column; pass field=NAME") from None


READERS = {"text": _text_docs, "jsonl": _jsonl_docs, "parquet": _parquet_docs, "hfdisk": _dataset_docs, "hf": _dataset_docs}


def _open_table(kind: str, what, field_: str, split: str):
    """Parquet files and saved datasets opened, their column checked; other kinds as they are."""
    from .extras import require

    if kind == "parquet":
        pq = require("pyarrow.parquet", "reading Parquet")
        try:
            pf = pq.ParquetFile(what)
        except Exception as e:
            raise GPT2KitError(f"{what} is not a readable Parquet file ({_first_line(e)})") from None
        _check_column(what, field_, pf.schema_arrow.names)
        return pf
    if kind == "hf":
        _check_column(f"dataset {what.info.dataset_name or ''}".strip(), field_, getattr(what, "column_names", None))
        return what
    if kind == "hfdisk":
        datasets = require("datasets", "reading a saved Hugging Face dataset")
        try:
            ds = datasets.load_from_disk(what)
        except Exception as e:
            raise GPT2KitError(f"{what} is not a dataset saved by datasets' save_to_disk ({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise GPT2KitError(f"{what} has the splits {', '.join(ds)}, not {split!r}; pass split=NAME")
            ds = ds[split]
        _check_column(what, field_, ds.column_names)
        return ds
    return what


def _check_column(where: str, field_: str, names) -> None:
    if names is not None and field_ not in names:
        raise GPT2KitError(f"{where} has no {field_!r} column (it has {', '.join(names)}); pass field=NAME")


def _hf_load(dataset: str, name: str | None, split: str, data_files=None):
    """A streamed datasets.IterableDataset; any failure (offline, unknown name, bad split) is one line."""
    from .extras import require

    datasets = require("datasets", "reading Hugging Face datasets")
    try:
        with _quiet_hub_logs():  # its retries log a line each: the failure below is the one line
            ds = datasets.load_dataset(dataset, name, split=split, data_files=data_files, streaming=True)
            iter(ds)
    except Exception as e:
        where = "its data files" if data_files else "the Hugging Face hub"
        raise GPT2KitError(f"cannot open dataset {dataset!r}" + (f" (config {name!r})" if name else "") + f", split {split!r}, "
                           f"from {where} ({type(e).__name__}: {_first_line(e)}); offline, download it first "
                           "(datasets' save_to_disk, or its Parquet files) and pass the local directory or files") from None
    return ds


@contextlib.contextmanager
def _quiet_hub_logs():
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]
