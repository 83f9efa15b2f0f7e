"""Built-in training corpora, prepared on first use.

python-stdlib   the top-level .py files of this Python's standard library (found through
                sysconfig): present wherever gpt2kit installs, so the quick start needs no download.
shakespeare     tiny shakespeare (nanoGPT's shakespeare_char), downloaded once into the cache.
"""
from __future__ import annotations

import glob
import os
import sysconfig

from .errors import GPT2KitError
from .fileio import atomic_path, read_json

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
NAMES = ("python-stdlib", "shakespeare")


def cache_dir(sub: str = "") -> str:
    """gpt2kit's download cache ($GPT2KIT_CACHE, else ~/.cache/gpt2kit), or a folder of it."""
    base = os.environ.get("GPT2KIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpt2kit")
    return os.path.join(base, sub) if sub else base


def python_stdlib_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if not files:
        raise GPT2KitError("no standard-library .py files found through sysconfig; pass data=DIR prepared with `gpt2kit prepare`")
    return files


def shakespeare_file() -> str:
    path = os.path.join(cache_dir(), "tinyshakespeare.txt")
    if os.path.exists(path):
        return path
    import urllib.request

    os.makedirs(cache_dir(), exist_ok=True)
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=20) as r, atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(r.read())
    except OSError as e:
        raise GPT2KitError(
            f"cannot download tiny shakespeare ({getattr(e, 'reason', e)}); offline, pass a file instead: "
            "gpt2kit prepare path/to/tinyshakespeare.txt --tokenizer char --out data/sc, then data=data/sc"
        ) from None
    return path


def prepared(name: str, out_dir: str, tokenizer: str = "char", progress: bool = True) -> str:
    """Prepare a built-in corpus into out_dir (once; reused while the tokenizer spec matches)."""
    from .data import prepare

    if name not in NAMES:
        raise GPT2KitError(f"data={name!r} is neither a prepared data dir nor a built-in corpus ({', '.join(NAMES)})")
    meta = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta) and read_json(meta, "data meta").get("corpus") == [name, tokenizer]:
        return out_dir
    files = python_stdlib_files() if name == "python-stdlib" else [shakespeare_file()]
    # min_freq 5 drops the stray non-ASCII characters of the stdlib; they map to the unknown id
    prepare(files, out_dir, tokenizer, min_freq=5 if name == "python-stdlib" and tokenizer == "char" else 1, progress=progress)
    from .fileio import write_json_atomic

    m = read_json(meta, "data meta")
    m["corpus"] = [name, tokenizer]
    write_json_atomic(meta, m)
    return out_dir
