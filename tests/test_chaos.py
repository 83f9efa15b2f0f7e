"""bench/chaos.py with a few kills per verb: every SIGKILL leaves the old or the new complete output."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_chaos_few_kills(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--kills", "3", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "OK: every kill left the old or the new complete output" in r.stdout
