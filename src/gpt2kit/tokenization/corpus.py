"""Reading training text: UTF-8 files in ~1M-character chunks, with one-line errors; the one text chunker."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

from ..errors import GPT2KitError

CHUNK_CHARS = 1 << 20
# a newline between two non-space characters: GPT-2's regex (and HF's byte-level pre-tokenizer)
# always ends a piece there, and jieba segments the two sides apart, so no tokenizer merges across it
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def chunk_text(text: str, target: int = CHUNK_CHARS) -> Iterator[str]:
    """Split text into ~target-char pieces (longer where no cut exists) at 'x\\nY' boundaries,
    so that tokenizing the pieces one by one gives the same tokens as tokenizing the whole."""
    start = 0
    while len(text) - start > target:
        m = _SAFE_CUT.search(text, start + target)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    if start < len(text) or not text:
        yield text[start:]


def last_safe_cut(text: str, lo: int = 0) -> int | None:
    """The last position after lo where chunk_text may cut text (None if there is none): a reader
    that stops a block there can tokenise the block alone and the rest later, tokens unchanged."""
    i = text.rfind("\n", lo)
    while i >= lo and i != -1:
        if _SAFE_CUT.match(text, i + 1):
            return i + 1
        i = text.rfind("\n", lo, i)
    return None


def read_text_files(files: Sequence[str | os.PathLike]) -> Iterator[str]:
    """The files' text, in order, as chunks that split only between lines."""
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise GPT2KitError(f"text file not found: {path}") from None
        except IsADirectoryError:
            raise GPT2KitError(f"{path} is a directory; give text files (e.g. DIR/*.txt)") from None
        except UnicodeDecodeError as e:
            raise GPT2KitError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it, e.g. `iconv -f GBK -t UTF-8`") from None
        yield from chunk_text(text)
