"""fileio.atomic_dir: whole-directory swaps, carried entries, the fallback swap and its recovery."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2kit import fileio
from gpt2kit.fileio import atomic_dir, recover_stale


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _make_old(out: Path):
    out.mkdir()
    (out / "model.safetensors").write_text("old weights")
    (out / "config.json").write_text("old config")
    (out / "state").mkdir()
    (out / "state" / "LATEST").write_text("7")
    return open(out / "train.log", "a")  # held open, as training holds its log


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_replaces_outputs_and_carries_the_rest(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    log = _make_old(out)
    with atomic_dir(out, owns=("config.json",)) as tmp:
        Path(tmp, "model.safetensors").write_text("new weights")
    log.write("appended after the swap\n")
    log.close()
    assert (out / "model.safetensors").read_text() == "new weights"
    assert not (out / "config.json").exists()  # owned by the output, not written this time: dropped
    assert (out / "state" / "LATEST").read_text() == "7"
    assert (out / "train.log").read_text() == "appended after the swap\n"  # same inode, carried by a hard link
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_failure_leaves_old_dir_untouched(tmp_path):
    out = tmp_path / "run"
    _make_old(out).close()
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            Path(tmp, "model.safetensors").write_text("half")
            raise RuntimeError("killed")
    assert (out / "model.safetensors").read_text() == "old weights"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_kill_between_fallback_renames_is_recovered(tmp_path):
    """The two-rename swap's window: PATH moved to PATH.oldPID and the writer killed."""
    pid = _dead_pid()
    old = tmp_path / f"run.old{pid}"
    old.mkdir()
    (old / "config.json").write_text("old config")
    (tmp_path / f"run.tmp{pid}").mkdir()  # its finished new dir, never moved in
    recover_stale(tmp_path / "run")
    assert (tmp_path / "run" / "config.json").read_text() == "old config"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_live_writers_temp_files_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f"x.gguf.tmp{live.pid}").write_text("being written")
        (tmp_path / f"x.gguf.tmp{_dead_pid()}").write_text("left by kill -9")
        with fileio.atomic_path(tmp_path / "x.gguf") as tmp:
            Path(tmp).write_text("gguf")
        assert sorted(os.listdir(tmp_path)) == sorted(["x.gguf", f"x.gguf.tmp{live.pid}"])
    finally:
        live.kill()
        live.wait()
