"""Atomic file writes: write a temp file beside the target, fsync, then os.replace.

A crash (even kill -9) at any moment leaves either the old file or the new one, never a
half-written file, because os.replace is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path to write; on success it replaces `path`, on error it is removed."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())  # some writers (safetensors) create their file 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    from .errors import GPT2KitError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise GPT2KitError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GPT2KitError(f"{what} {path} is not valid JSON ({e}); restore or re-create it") from None
