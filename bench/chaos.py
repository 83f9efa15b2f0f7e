"""SIGKILL `train`, `prepare`, `convert` and `export` at random moments; the output must always be
the old complete result or the new one, never neither (issue 16, "Atomic outputs").

For each verb: an old output is put in place, the verb is started to replace it with a new one,
and the whole process group (workers included) gets SIGKILL after a random delay: a quarter of the
delays are uniform over the verb's run time T, the rest over [0.7 T, T], where the writes are, with
T adapted after each such kill (shorter when the run had already finished, longer when it had not
yet replaced anything) so that the kills home in on the moment the output is replaced. The output is then fingerprinted (a hash of every file) and must equal the old or the new
reference. For train (a resume from iter 30 to 60, saving the model at 40, 50, 60), the saved
model's weights and its meta.json iter must match one of the reference saves. Temp files left by
kills (`*.tmpPID`, `*.oldPID`) are counted, and must be gone after one more complete run.

    python bench/chaos.py [--kills 50] [--verbs train,prepare,...] [--seed 0] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import table  # noqa: E402

STALE = re.compile(r"\.(tmp|old)\d+$")
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-interval", "10", "--eval-iters", "2", "--samples", "0", "--always-save-checkpoint", "--no-decay-lr",
        "--warmup-iters", "0", "--no-progress", "--threads", "1", "--device", "cpu", "--dropout", "0"]


def gpt2kit(*args) -> list[str]:
    return [sys.executable, "-m", "gpt2kit", *map(str, args)]


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise SystemExit(f"reference run failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def fingerprint(path: Path, only: tuple[str, ...] | None = None) -> str | None:
    """sha256 over every file under path (or of the file), temp leftovers excluded; None if absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(path).as_posix() if p != path else ""
        if STALE.search(p.name) or (only and rel.split("/")[0] not in only):
            continue
        h.update(rel.encode() + b"\0" + file_digest(p))
    return h.hexdigest()


def file_digest(p: Path) -> bytes:
    """sha256 of a file; of its tensors for safetensors (its metadata order varies from save to save)."""
    if p.suffix != ".safetensors":
        return hashlib.sha256(p.read_bytes()).digest()
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(p, "np") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            h.update(f"{k} {t.dtype} {t.shape}".encode() + t.tobytes())
    return h.digest()


def train_fingerprint(run_dir: Path) -> str | None:
    """The saved model of a run: weights, config and the iter its meta.json claims."""
    try:
        it = json.loads((run_dir / "meta.json").read_text())["iter"]
    except (OSError, ValueError, KeyError):
        return None
    return f"iter {it} " + str(fingerprint(run_dir, only=("config.json", "model.safetensors")))


def leftovers(target: Path) -> list[Path]:
    """Temp files beside the target, and inside it (a run dir's state files)."""
    near = [p for p in target.parent.iterdir() if p.name.startswith(target.name + ".") and STALE.search(p.name)]
    inside = [p for p in target.rglob("*") if STALE.search(p.name)] if target.is_dir() else []
    return near + inside


def put(src: Path, dst: Path) -> None:
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)


@dataclass
class Case:
    verb: str
    cmd: list[str]  # replaces old with new at target
    old: Path  # a complete old output, copied to target before each try
    target: Path
    allowed: dict[str, str] = field(default_factory=dict)  # fingerprint -> "old" | "new"
    fp: Callable[[Path], str | None] = fingerprint
    seconds: float = 0.0


def build_cases(work: Path, verbs: list[str]) -> list[Case]:
    """Reference outputs for each verb: the old and the new complete result, and their fingerprints."""
    import numpy as np  # noqa: F401  (fail early if the environment is broken)

    a, b = work / "a.txt", work / "b.txt"
    a.write_text("".join(f"first corpus, line {i}: to be or not to be\n" for i in range(3000)))
    b.write_text("".join(f"second corpus, line {i}: all the world's a stage\n" for i in range(4000)))
    run(gpt2kit("prepare", a, "--out", work / "data", "--tokenizer", "char", "--num-proc", "1"))
    # two small models (different seeds) to convert and export: the old and the new source
    for k in (0, 1):
        run(gpt2kit("train", "--data", work / "data", "--out", work / f"m{k}", "--max-iters", "1", "--seed", k, *TINY))
    cases = []
    if "prepare" in verbs:
        run(gpt2kit("prepare", b, "--out", work / "prep_new", "--tokenizer", "char", "--num-proc", "2"))
        cases.append(Case("prepare", gpt2kit("prepare", b, "--out", work / "prep", "--tokenizer", "char", "--num-proc", "2"),
                          work / "data", work / "prep", {fingerprint(work / "data"): "old", fingerprint(work / "prep_new"): "new"}))
    if "convert" in verbs:
        run(gpt2kit("convert", work / "m0", "--out", work / "conv_old"))
        run(gpt2kit("convert", work / "m1", "--out", work / "conv_new"))
        cases.append(Case("convert", gpt2kit("convert", work / "m1", "--out", work / "conv"), work / "conv_old", work / "conv",
                          {fingerprint(work / "conv_old"): "old", fingerprint(work / "conv_new"): "new"}))
    for fmt, name in (("hf", "hf"), ("gguf", "x.gguf"), ("llmc", "x.bin")):
        if f"export-{fmt}" not in verbs and "export" not in verbs:
            continue
        old, new = work / "old" / name, work / "new" / name  # same file name: GGUF records it
        old.parent.mkdir(exist_ok=True)
        new.parent.mkdir(exist_ok=True)
        run(gpt2kit("export", work / "m0", "--format", fmt, "--out", old))
        run(gpt2kit("export", work / "m1", "--format", fmt, "--out", new))
        cases.append(Case(f"export {fmt}", gpt2kit("export", work / "m1", "--format", fmt, "--out", work / name), old,
                          work / name, {fingerprint(old): "old", fingerprint(new): "new"}))
    if "train" in verbs:
        base = work / "run_base"
        run(gpt2kit("train", "--data", work / "data", "--out", base, "--max-iters", "30", "--seed", "1", *TINY))
        allowed = {train_fingerprint(base): "old"}
        for it in (40, 50, 60):  # every save the resumed run makes, each a complete new result
            ref = work / f"run_{it}"
            put(base, ref)
            run(gpt2kit("train", "--resume", ref, "--max-iters", it))
            allowed[train_fingerprint(ref)] = "new" if it == 60 else f"new@{it}"
        cases.append(Case("train", gpt2kit("train", "--resume", work / "run", "--max-iters", "60"), base, work / "run",
                          allowed, train_fingerprint))
    return cases


def timed(case: Case) -> None:
    put(case.old, case.target)
    case.seconds = run(case.cmd)
    got = case.fp(case.target)
    if not case.allowed.get(got, "").startswith("new"):
        raise SystemExit(f"{case.verb}: a complete run does not reproduce the reference output (non-deterministic?)")


def attack(case: Case, kills: int, rng: random.Random) -> dict:
    counts = {"old": 0, "new": 0, "new (intermediate save)": 0, "recovered": 0, "BROKEN": 0}
    temps, t = 0, case.seconds
    for _ in range(kills):
        put(case.old, case.target)
        for p in leftovers(case.target):  # start each try clean; leftovers of this try are counted below
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        late = rng.random() < 0.75
        delay = rng.uniform(0.7 * t, t) if late else rng.uniform(0, t)
        proc = subprocess.Popen(case.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        temps += len(leftovers(case.target))
        got = case.fp(case.target)
        if got is None and not case.target.exists():
            # the two-rename fallback's window (no renameat2 exchange here): the next writer restores the old dir
            from gpt2kit.fileio import recover_stale

            recover_stale(case.target)
            got = case.fp(case.target)
            kind = "recovered" if case.allowed.get(got) else "BROKEN"
        else:
            kind = case.allowed.get(got, "BROKEN")
            kind = "new (intermediate save)" if kind.startswith("new@") else kind
        counts[kind] += 1
        if late:  # home in on the swap: a late kill that found the new output was too late, one that found the old too early
            t *= 0.93 if kind == "new" else 1.05 if kind == "old" else 1.0
    # one more complete run must clean what the kills left
    subprocess.run(case.cmd, capture_output=True, env=ENV)
    return {**counts, "temps left by kills": temps, "temps after next run": len(leftovers(case.target))}


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="SIGKILLs per verb (default: 50)")
    ap.add_argument("--verbs", default="train,prepare,convert,export", help="comma-separated: train, prepare, convert, export (all formats) or export-hf/-gguf/-llmc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp dir, removed afterwards)")
    args = ap.parse_args(argv)
    verbs = args.verbs.split(",")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpt2kit-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    rows, broken = [], 0
    try:
        for case in build_cases(work, verbs):
            timed(case)
            r = attack(case, args.kills, rng)
            broken += r["BROKEN"] + r["temps after next run"]
            rows.append([case.verb, args.kills, f"{case.seconds:.1f}", *r.values()])
            print(f"{case.verb}: {r}", file=sys.stderr, flush=True)
    finally:  # (SIGINT / an exception; a SIGTERM'd run leaves its temp workdir behind)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    header = ["verb", "kills", "run s", "old", "new", "new (intermediate save)", "recovered", "BROKEN",
              "temps left by kills", "temps after next run"]
    print(table(rows, header))
    print("OK: every kill left the old or the new complete output" if not broken else f"FAIL: {broken} broken outputs or leftover temps")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
