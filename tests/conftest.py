import contextlib
import os
import sys
from pathlib import Path

import pytest

# The engine's thread governor (inference/threads.py) would see pytest's own server and CLI subprocesses as
# busy neighbours and change torch's thread count for the rest of the session; tests of it turn it back on.
os.environ.setdefault("GPT2KIT_ADAPT_THREADS", "0")

# pytest-xdist runs test files in parallel workers (pyproject's addopts). Each worker and the CLI
# processes it starts take one thread: two workers that each spin two OpenMP threads on two cores run
# ~5x slower, not 2x faster. Set before torch is imported anywhere; tests of threading set their own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# CI clones the repo next to shared/; tests read the shared corpora from there.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CI always has it)")
    return SHARED_DATA


def hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, seed=0):
    """A randomly initialised transformers GPT2LMHeadModel: the oracle for parity tests."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    m = GPT2LMHeadModel(cfg).eval()
    # HF's init leaves biases and LayerNorm at 0/1; perturb them so the test covers every weight.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.02)
    return m


def ours_from_hf(hf):
    from gpt2kit.config import GPTConfig
    from gpt2kit.weights import build_model, from_hf_state_dict

    return build_model(GPTConfig.from_hf(hf.config.to_dict()), from_hf_state_dict({k: v.clone() for k, v in hf.state_dict().items()}))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight gpt2kit checkpoint dir with GPT-2's tokenizer."""
    import torch

    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT
    from gpt2kit.tokenization import get_tokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)), d, tokenizer=get_tokenizer("gpt2"))
    return d


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def run_cli(*args, input=None, timeout=300, env=None, cwd=None):
    """Run `python -m gpt2kit ARGS` in a subprocess; returns the CompletedProcess (text mode)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "gpt2kit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, input=input, env=env, cwd=cwd)


def assert_one_line_error(r, needle: str = "", code: int = 2):
    """The CLI's contract for bad input: exit `code`, one line on stderr naming the problem, no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    assert needle.lower() in lines[0].lower(), (needle, lines[0])


def _tmpfs(path: Path, options: str):
    """Mount a tmpfs at `path` (root only; tests skip elsewhere). Root ignores chmod, so a read-only or
    full file system has to be a real mount."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (root ignores file modes, so only a mount is read-only or full)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    return path


@pytest.fixture
def readonly_dir(tmp_path):
    """An empty directory on a read-only file system (writes fail with EROFS, even for root)."""
    import subprocess

    d = _tmpfs(tmp_path / "ro", "ro,size=1m")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def full_disk_dir(tmp_path):
    """An empty directory on a 64 KiB file system: any real write fails with ENOSPC."""
    import subprocess

    d = _tmpfs(tmp_path / "full", "size=64k")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def cli_in_process(*args, input: str | None = None):
    """`gpt2kit ARGS` run by the CLI's main() in this process, as a CompletedProcess like run_cli's.

    A subprocess spends most of its time importing torch (1-2 s on a quiet machine, a minute on a loaded
    CI runner); tests of what a verb does or prints use this, and run_cli is kept for what needs a
    process of its own (signals, environment variables read at import, the `python -m gpt2kit` entry)."""
    import io
    import subprocess
    from unittest import mock

    from gpt2kit.cli import main

    def text(initial=""):  # like a real stream: text over bytes, so `.buffer` works too
        return io.TextIOWrapper(io.BytesIO(initial.encode()), encoding="utf-8")

    out, err, stdin = text(), text(), text(input or "")
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(mock.patch.object(sys, "stdin", stdin))
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # as the interpreter does at exit: None is 0, a message goes to stderr with 1
            rc = e.code if isinstance(e.code, int) else 0 if e.code is None else print(e.code, file=err) or 1
    out.flush(), err.flush()
    return subprocess.CompletedProcess(args, rc, out.buffer.getvalue().decode(), err.buffer.getvalue().decode())


def sigkill_after_iter(proc, run_dir: Path, at: int, timeout: float = 600) -> int:
    """SIGKILL a training process once its run_dir/state/LATEST reaches iteration `at`; the iteration it had saved."""
    import json
    import signal
    import time

    latest = Path(run_dir) / "state" / "LATEST"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.exists() and json.loads(latest.read_text())["iter"] >= at:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(latest.read_text())["iter"]
