"""Reading training text: UTF-8 files in ~1M-character chunks, with one-line errors."""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from ..errors import GPT2KitError

CHUNK_CHARS = 1 << 20


def _chunks(text: str) -> Iterator[str]:
    """Split a file into ~1M-char pieces at 'x\\nY' boundaries (both sides non-space), where
    GPT-2's regex always splits too, so training sees the same pieces encoding will."""
    import regex

    boundary = regex.compile(r"(?<=\S\n)(?=\S)")
    start = 0
    while len(text) - start > CHUNK_CHARS:
        m = boundary.search(text, start + CHUNK_CHARS)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    if start < len(text):
        yield text[start:]


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
        yield from _chunks(text)
