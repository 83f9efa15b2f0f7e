"""Atomic outputs: files and whole directories are built beside their target, then swapped in.

atomic_path (one file): write `PATH.tmpPID`, fsync, os.replace. A crash (even kill -9) at any
moment leaves the old file or the new one, because os.replace is atomic on POSIX and Windows.

atomic_dir (a directory of outputs): build everything in `PATH.tmpPID`, then swap. On Linux the
swap is one renameat2(RENAME_EXCHANGE) call, so PATH is the old complete dir or the new complete
dir at every instant; the old tree, now at PATH.tmpPID, is removed afterwards. Where the exchange
is unsupported (other systems, some file systems) the swap is two renames, PATH -> PATH.oldPID
and PATH.tmpPID -> PATH: a kill between them leaves PATH absent for that window, with the old
dir complete at PATH.oldPID, and the next atomic write to PATH (or recover_stale) puts it back.
Only process kills are covered: surviving power loss would also need every file fsynced (files
written with atomic_path are).

Leftovers of a killed run (`PATH.tmpPID`, `PATH.oldPID`) are removed by the next atomic write
to PATH, but only when process PID is gone, so a concurrent writer is never disturbed (a reused
PID keeps its leftovers until that process ends).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil

# errors that mean "this place cannot be written" rather than a bug: shown as one line
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EXDEV}


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _is_stale(name: str) -> bool:
    m = re.search(r"\.(tmp|old)(\d+)$", name)
    return m is not None and not _pid_alive(int(m.group(2)))


def recover_stale(path: str | os.PathLike) -> None:
    """Remove `PATH.tmpPID` / `PATH.oldPID` left by dead processes; restore PATH from a dead
    writer's `PATH.oldPID` when a kill landed between the two renames of a non-exchange swap."""
    path = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(path)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    pattern = re.compile(re.escape(base) + r"\.(tmp|old)(\d+)")
    found = [m for m in map(pattern.fullmatch, names) if m and not _pid_alive(int(m.group(2)))]
    for m in sorted(found, key=lambda m: m.group(1) != "old"):  # restore before removing
        stale = os.path.join(parent, m.group(0))
        if m.group(1) == "old" and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.rename(stale, path)
                continue
        with contextlib.suppress(OSError):
            _remove(stale)


def check_writable(path: str | os.PathLike) -> str:
    """Before any work: the nearest existing ancestor of `path` (where makedirs would start) must be a
    writable directory. Returns that ancestor."""
    from .errors import GPT2KitError

    existing = os.path.abspath(os.fspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise GPT2KitError(f"cannot write {path}: {existing} is a file; choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GPT2KitError(f"cannot write {path}: {existing} is not writable (read-only file system or no permission); "
                           "choose a writable output path")
    return existing


def write_failure(e: BaseException) -> str | None:
    """The reason, when `e` says the output cannot be written (full disk, read-only, ...)."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return e.strerror or str(e)
    text = str(e)
    for reason in ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded"):
        if reason in text:  # e.g. safetensors' SafetensorError wraps the OS error in its message
            return reason
    return None


@contextlib.contextmanager
def write_errors(path: str):
    """Turn "cannot write here" errors into a one-line GPT2KitError naming `path`."""
    from .errors import GPT2KitError

    try:
        yield
    except GPT2KitError:
        raise
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        fix = "free some space or choose another output path" if "space" in reason.lower() else "choose a writable output path"
        raise GPT2KitError(f"cannot write {path}: {reason}; {fix}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path to write; on success it replaces `path`, on error it is removed."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with write_errors(path):
        recover_stale(path)
        try:
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _new_file_mode())  # some writers (safetensors) create their file 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, owns: tuple[str, ...] = ()):
    """Yield an empty temp dir to build `path` in; on success it replaces `path` as a whole.

    owns: the top-level names this output writes. Other entries of an existing `path` (a training
    run's state/, logs, ...) are carried into the new dir as hard links, so they survive the swap
    and files held open keep writing to the same inodes. On error the temp dir is removed and
    `path` is untouched.
    """
    from .errors import GPT2KitError

    path = os.path.realpath(os.fspath(path))  # a symlinked output dir is replaced where it really is
    if os.path.lexists(path) and not os.path.isdir(path):
        raise GPT2KitError(f"{path} exists and is not a directory; choose a directory path")
    tmp = f"{path}.tmp{os.getpid()}"
    with write_errors(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        recover_stale(path)
        _remove(tmp)
        os.mkdir(tmp)
        try:
            yield tmp
            if os.path.isdir(path):
                _carry_over(path, tmp, owns)
            _swap_in(tmp, path)
        finally:
            _remove(tmp)


def _carry_over(old: str, new: str, owns: tuple[str, ...]) -> None:
    for name in os.listdir(old):
        if name in owns or os.path.lexists(os.path.join(new, name)) or _is_stale(name):
            continue
        src, dst = os.path.join(old, name), os.path.join(new, name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_in(tmp: str, path: str) -> None:
    """Move the finished `tmp` to `path`; afterwards `tmp` holds the old tree (or nothing)."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        return
    old = f"{path}.old{os.getpid()}"
    os.rename(path, old)
    os.rename(tmp, path)  # a kill before this line: recover_stale restores `old`
    os.rename(old, tmp)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


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
