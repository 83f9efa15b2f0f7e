"""bench/serve_load.py: its percentiles, tables and target flags, and one quick run against a tiny server."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def load_script():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


sl = load_script()


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert sl.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert sl.percentile([4.0], 99) == 4.0
    assert sl.percentile([], 50) != sl.percentile([], 50)  # nan: nothing measured


def test_format_table_columns_and_ratios():
    out = sl.format_table("t", ["peak RSS MB", "requests ok", "missing"],
                          {"old": {"peak RSS MB": 8000.0, "requests ok": 64},
                           "new": {"peak RSS MB": 2000.0, "requests ok": 64, "missing": 1.5}})
    assert out.splitlines() == [
        "t",
        "metric        old   new  new/old",
        "-----------  ----  ----  -------",
        "peak RSS MB  8000  2000    0.25x",
        "requests ok    64    64        -",  # counts get no ratio
        "missing         -   1.5        -",  # not measured for old: a dash, never a number
    ]


def test_format_table_one_target_has_no_ratio_column():
    out = sl.format_table("t", ["x"], {"only": {"x": 0.01234}})
    assert out.splitlines()[1].split() == ["metric", "only"]
    assert out.splitlines()[3].split() == ["x", "0.0123"]


def test_targets_take_their_own_label_and_serve_args():
    a = sl.parse_args(["--model", "m", "--serve-args", "--max-concurrency 64 --max-queue 64",
                       "--src", "old/src", "--label", "today",
                       "--src", "new/src", "--label", "chunked", "--serve-args", "--max-step-tokens 256 --threads 1",
                       "--base-url", "http://127.0.0.1:9/", "--server-pid", "42", "--no-seed"])
    assert [(t.kind, t.where, t.label, t.serve_args, t.pid, t.seeded) for t in a.targets] == [
        ("src", "old/src", "today", ["--max-concurrency", "64", "--max-queue", "64"], None, True),
        ("src", "new/src", "chunked", ["--max-step-tokens", "256", "--threads", "1"], None, True),
        ("url", "http://127.0.0.1:9/", "url3", None, 42, False),
    ]


def test_label_before_any_target_is_refused(capsys):
    with pytest.raises(SystemExit):
        sl.parse_args(["--label", "x", "--src", "s", "--model", "m"])
    assert "must follow the --src, --base-url or --launch" in capsys.readouterr().err


@pytest.mark.slow  # starts two servers (~15 s); the pure parts above run by default
def test_quick_rss_run_against_two_tiny_servers(tmp_path):
    """One server started from --src, one by --launch (how vLLM is run): both measured, side by side."""
    model = tmp_path / "tiny"
    launch = f"PYTHONPATH={ROOT / 'src'} {sys.executable} -m gpt2kit serve --model {model} --no-page --port {{port}} --threads 1"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--make-model", "tiny", str(model),
                        "--quick", "--scenario", "rss", "--serve-args", "--threads 1",
                        "--src", str(ROOT / "src"), "--label", "a", "--launch", launch, "--label", "b"],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[1].startswith("load average at start: ") and lines[-1].startswith("load average at end: ")
    i = lines.index("rss: 8 concurrent streaming requests, 100-token prompts, max_tokens 16")
    assert lines[i + 1].split() == ["metric", "a", "b", "b/a"]
    rows = {re.split(r"\s{2,}", ln)[0]: re.split(r"\s{2,}", ln)[1:] for ln in lines[i + 3:i + 8]}
    assert list(rows) == ["idle RSS MB", "peak RSS MB", "requests ok", "tokens received", "wall s"]
    assert rows["requests ok"] == ["8", "8", "-"]
    for name in ("idle RSS MB", "peak RSS MB"):
        a, b, ratio = rows[name]
        assert float(a) > 50 and float(b) > 50 and ratio.endswith("x")  # a python + torch process: measured, not a dash
    assert 8 <= int(rows["tokens received"][0]) <= 8 * 16  # EOT can end a row early; never more than max_tokens
