"""The append-only logs of a run: metrics.jsonl (one JSON record per eval) and train.log.

They are appended line by line, not written atomically, so a kill mid-append can leave a torn
last line. Resume drops such a line (with a one-line notice) instead of failing on it.
"""
from __future__ import annotations

import json
import os

from .errors import GPT2KitError
from .fileio import atomic_path


def append_line(path: str, line: str) -> None:
    """Append one line in a single write, so a kill tears at most this line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def drop_torn_tail(path: str) -> bool:
    """Cut an unterminated last line (a write cut short by a kill); True if there was one."""
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


def read_metrics(path: str) -> tuple[list[dict], bool]:
    """(records, torn): the JSON records of metrics.jsonl; a last line that does not parse is torn."""
    if not os.path.exists(path):
        return [], False
    lines = [ln for ln in open(path, encoding="utf-8", errors="replace").read().split("\n") if ln.strip()]
    recs = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("not a metrics record")
        except ValueError:
            if i == len(lines) - 1:
                return recs, True
            raise GPT2KitError(f"{path} line {i + 1} is not a metrics record; delete that line to resume") from None
        recs.append(rec)
    return recs, False


def truncate_metrics(path: str, upto: int) -> bool:
    """On resume, keep the records up to step `upto` (a killed run may have logged later ones).

    Returns True if a torn last line was dropped."""
    recs, torn = read_metrics(path)
    if not os.path.exists(path):
        return False
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs if r["step"] <= upto)
    return torn
