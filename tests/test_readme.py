"""The README runs as written.

Every fenced block whose info string is `console` is a transcript: lines starting with `$ ` are
commands, the lines after them are what they print. The blocks run in README order in one fresh
working directory whose `../shared/data` is the shared corpora (as beside a fresh clone), so a
command may use what an earlier one made. A command whose transcript shows a `... error: ...` line
must exit 2 and print exactly that line; every other command must exit 0. `python` blocks run as
scripts in the same place and order. Training commands get short settings appended (later flags
win), so the whole README runs in about a minute. Blocks marked `sh` or `text` (hub downloads,
GPUs, servers, benchmarks) are shown, not run.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import SHARED_DATA

README = Path(__file__).resolve().parents[1] / "README.md"
# appended to these commands so the README runs in the test budget; the README shows the real run
SHORT = {
    "gpt2kit train": ["--max-iters", "12", "--eval-interval", "6", "--eval-iters", "2", "--sample-tokens", "20"],
    "gpt2kit demo addition": ["--steps", "20"],
}


@dataclass
class Command:
    line: int
    cmd: str
    shown: list[str] = field(default_factory=list)

    @property
    def error_line(self) -> str | None:
        return next((s for s in self.shown if re.match(r"^gpt2kit [\w ]+: error: ", s)), None)


@dataclass
class Script:
    line: int
    code: list[str] = field(default_factory=list)


def runnable(text: str) -> list[Command | Script]:
    """The README's console commands and python blocks, in order."""
    out, block = [], None
    for i, ln in enumerate(text.splitlines(), 1):
        if ln.startswith("```"):
            block = None if block else ln.strip()[3:]
            if block == "python":
                out.append(Script(i + 1))
            continue
        if block == "python":
            out[-1].code.append(ln)
        elif block == "console" and ln.startswith("$ "):
            out.append(Command(i, ln[2:].strip()))
        elif block == "console" and out and isinstance(out[-1], Command):
            out[-1].shown.append(ln)
    return out


def console_commands(text: str) -> list[Command]:
    return [c for c in runnable(text) if isinstance(c, Command)]


def as_run(cmd: str) -> str:
    """`gpt2kit ...` and `python ...` run with this interpreter (the installed entry point may be another
    checkout's); the short settings are appended."""
    for prefix, extra in SHORT.items():
        if cmd.startswith(prefix + " ") and not cmd.startswith(prefix + " --help"):
            cmd = f"{cmd} {' '.join(map(shlex.quote, extra))}"
    py = shlex.quote(sys.executable)
    cmd = re.sub(r"(^|&& |\| )gpt2kit ", rf"\1{py} -m gpt2kit ", cmd)
    return re.sub(r"(^|&& |\| )python ", rf"\1{py} ", cmd)


def test_readme_has_transcripts():
    cmds = console_commands(README.read_text())
    assert len(cmds) >= 10, "the README should show its commands as `console` transcripts"


def gpt2kit_argvs(cmd: str) -> list[list[str]]:
    """The argument lists of the `gpt2kit` commands in a shell line (pipes and `&&` split it)."""
    words = shlex.split(cmd, posix=True)
    out, cur = [], None
    for w in words + ["|"]:
        if w in ("|", "&&", ";", ">", "<"):
            if cur is not None:
                out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(w)
        elif w == "gpt2kit":
            cur = []
    return out


def test_readme_commands_parse():
    """Every README `gpt2kit` command parses with today's CLI: a renamed or removed flag fails here in
    a second, where running the whole README (below, marked slow) takes minutes. A transcript that
    shows an argparse error must get exactly that line."""
    from gpt2kit.cli import build_parser

    seen = 0
    for c in console_commands(README.read_text()):
        for argv in gpt2kit_argvs(c.cmd):
            seen += 1
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    build_parser().parse_args(argv)
            except SystemExit as e:
                if "--help" in argv and e.code == 0:
                    continue
                assert c.error_line is not None and err.getvalue().strip() == c.error_line, (
                    f"README.md:{c.line}: $ {c.cmd}\n{err.getvalue()}")
    assert seen >= 30


@pytest.mark.slow  # ~40 processes, each importing torch: 3 minutes on a quiet machine, 30+ on a loaded one
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_readme_commands_run_as_written(tmp_path):
    root = tmp_path / "clone"
    root.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(README.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    for c in runnable(README.read_text()):
        if isinstance(c, Script):
            r = subprocess.run([sys.executable, "-c", "\n".join(c.code)], cwd=root, env=env, capture_output=True,
                               text=True, timeout=600, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, f"README.md:{c.line}: python block\n--- stderr:\n{r.stderr[-3000:]}"
            continue
        r = subprocess.run(["bash", "-c", as_run(c.cmd)], cwd=root, env=env, capture_output=True, text=True,
                           timeout=600, stdin=subprocess.DEVNULL)
        where = f"README.md:{c.line}: $ {c.cmd}\n--- stderr:\n{r.stderr[-3000:]}"
        if c.error_line is None:
            assert r.returncode == 0, where
        else:
            assert r.returncode == 2, where
            assert r.stderr.strip().splitlines() == [c.error_line], where
