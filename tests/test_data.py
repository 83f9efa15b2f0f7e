"""Data preparation: round trips, EOT between documents, header checks, flat memory."""
import json
import os
import sysconfig

import numpy as np
import pytest

from gpt2kit.data import TokenData, prepare, read_tokens, write_tokens
from gpt2kit.tokenization.corpus import chunk_text
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenization import load_tokenizer


def test_char_prepare_matches_nanogpt_split(shared_data, tmp_path):
    r = prepare([str(shared_data / "tinyshakespeare.txt")], str(tmp_path / "sc"), "char", progress=False)
    assert (r.train_tokens, r.val_tokens) == (1_003_854, 111_540)  # nanoGPT's shakespeare_char
    tok = load_tokenizer(tmp_path / "sc" / "tokenizer")
    text = (shared_data / "tinyshakespeare.txt").read_text()
    ids = np.concatenate([read_tokens(str(tmp_path / "sc" / f"{s}.bin")) for s in ("train", "val")])
    assert tok.decode(ids.tolist()) == text
    assert tok.chars == sorted(set(text)) and len(tok.chars) == 65  # nanoGPT's 65-char vocab, same ids


def test_gpt2_prepare_jsonl_docs_end_with_eot(tmp_path):
    docs = ["Hello world.", "Second doc\nwith two lines.", "Ünïcødé 中文 🎉"]
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps({"body": d}) for d in docs))
    prepare([str(src)], str(tmp_path / "out"), "gpt2", field="body", val_fraction=0.2, num_proc=2, progress=False)
    ids = np.concatenate([read_tokens(str(tmp_path / "out" / f"{s}.bin")) for s in ("train", "val")]).tolist()
    tok = load_tokenizer(tmp_path / "out")
    expect = [t for d in docs for t in tok.encode(d) + [tok.eot_token]]
    assert ids == expect
    assert read_tokens(str(tmp_path / "out" / "train.bin")).dtype == np.uint16


def test_parallel_equals_serial_on_a_large_file(tmp_path):
    text = open(os.path.join(sysconfig.get_paths()["stdlib"], "inspect.py"), encoding="utf-8").read() * 2
    (tmp_path / "big.txt").write_text(text)
    assert len(list(chunk_text(text, 1 << 16))) > 2
    prepare([str(tmp_path / "big.txt")], str(tmp_path / "p1"), "gpt2", num_proc=1, progress=False)
    prepare([str(tmp_path / "big.txt")], str(tmp_path / "p2"), "gpt2", num_proc=2, progress=False)
    for s in ("train", "val"):
        assert np.array_equal(read_tokens(str(tmp_path / "p1" / f"{s}.bin")), read_tokens(str(tmp_path / "p2" / f"{s}.bin")))
    from gpt2kit.tokenization import get_tokenizer

    whole = get_tokenizer("gpt2").encode(text) + [50256]
    got = np.concatenate([read_tokens(str(tmp_path / "p2" / f"{s}.bin")) for s in ("train", "val")]).tolist()
    assert got == whole  # chunk boundaries never change the tokens


def test_vocab_overflow_and_dtype(tmp_path):
    with pytest.raises(GPT2KitError, match="does not fit"):
        write_tokens(str(tmp_path / "x.bin"), np.array([1, 70000]), 65536)
    write_tokens(str(tmp_path / "y.bin"), np.array([1, 70000]), 100_000)
    assert read_tokens(str(tmp_path / "y.bin")).dtype == np.uint32


def test_corrupt_token_files_rejected(tmp_path):
    p = tmp_path / "t.bin"
    write_tokens(str(p), np.arange(100), 1000)
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(GPT2KitError, match="truncated"):
        read_tokens(str(p))
    p.write_bytes(b"NOTMAGIC" + raw[8:])
    with pytest.raises(GPT2KitError, match="magic"):
        read_tokens(str(p))
    p.write_bytes(raw[:5])
    with pytest.raises(GPT2KitError, match="too short"):
        read_tokens(str(p))


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_batches_deterministic_and_rss_flat(tmp_path):
    write_tokens(str(tmp_path / "train.bin"), np.random.default_rng(0).integers(0, 50000, 2_000_000), 50257)
    write_tokens(str(tmp_path / "val.bin"), np.arange(5000) % 50257, 50257)
    (tmp_path / "meta.json").write_text(json.dumps({"n_vocab": 50257}))
    d = TokenData(str(tmp_path))
    x1, y1 = d.batch("train", 8, 64, (1, 2, 3))
    x2, _ = d.batch("train", 8, 64, (1, 2, 3))
    assert np.array_equal(x1, x2) and np.array_equal(x1[:, 1:], y1[:, :-1])
    for i in range(300):  # warm up: touch the mapped pages
        d.batch("train", 16, 256, (0, i, 0))
    before = _rss_kb()
    for i in range(3000):
        d.batch("train", 16, 256, (1, i, 0))
    assert _rss_kb() - before < 8 * 1024  # flat: < 8 MB growth over 3000 batches


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(GPT2KitError, match="not found"):
        prepare([str(tmp_path / "nope.txt")], str(tmp_path / "o"), "char", progress=False)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(GPT2KitError, match="bad.jsonl:2"):
        prepare([str(tmp_path / "bad.jsonl")], str(tmp_path / "o"), "gpt2", progress=False)
    with pytest.raises(GPT2KitError, match="prepare"):
        TokenData(str(tmp_path))


# -- hostile input (issue 16 items 4, 5, 6) ------------------------------------------------------

@pytest.mark.parametrize("num_proc", [1, 2])
def test_million_whitespace_prepares(tmp_path, num_proc):
    from gpt2kit.tokenization import get_tokenizer

    text = "a" + " \n" * 500_000 + "b\n" + "some words\n" * 50
    (tmp_path / "ws.txt").write_text(text)
    prepare([str(tmp_path / "ws.txt")], str(tmp_path / "out"), "gpt2", num_proc=num_proc, progress=False)
    got = np.concatenate([read_tokens(str(tmp_path / "out" / f"{s}.bin")) for s in ("train", "val")]).tolist()
    assert got == get_tokenizer("gpt2").encode(text) + [50256]


def test_tokenize_cli_million_whitespace():
    from conftest import run_cli

    r = run_cli("tokenize", "-", input="a" + " " * 1_000_000 + "b", timeout=600)
    assert r.returncode == 0, r.stderr[-500:]
    assert "1000001 tokens for 1000002 characters" in r.stdout.replace(",", "")


class _Panic(BaseException):  # stands in for tiktoken's PanicException, a BaseException
    pass


def _panic(self, text):
    raise _Panic("regex stack overflow")


def _die(self, text):
    os._exit(3)


@pytest.mark.parametrize("num_proc,failure", [(1, _panic), (2, _panic), (2, _die)])
def test_worker_failure_fails_prepare_with_one_error(tmp_path, monkeypatch, num_proc, failure):
    from gpt2kit.tokenization.gpt2 import GPT2Tokenizer

    (tmp_path / "a.txt").write_text("hello world\n" * 2000)
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "out"), "gpt2", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    monkeypatch.setattr(GPT2Tokenizer, "encode_ordinary", failure)  # forked workers inherit the patch
    (tmp_path / "b.txt").write_text("other text\n" * 3000)
    with pytest.raises(GPT2KitError, match="tokenizing failed"):
        prepare([str(tmp_path / "b.txt")], str(tmp_path / "out"), "gpt2", num_proc=num_proc, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "out"]  # no temp dir left


def test_failed_reprepare_keeps_old_data_dir(tmp_path):
    from conftest import assert_one_line_error, run_cli

    (tmp_path / "a.txt").write_text("hello world, a small corpus\n" * 200)
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "out"), "char", progress=False)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    (tmp_path / "tiny.txt").write_text("xy")
    r = run_cli("prepare", tmp_path / "tiny.txt", "--out", tmp_path / "out", "--tokenizer", "char")
    assert_one_line_error(r, "only")
    after = {str(p.relative_to(tmp_path)): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before and sorted(os.listdir(tmp_path)) == ["a.txt", "out", "tiny.txt"]


def test_num_proc_capped_at_cpu_count(tmp_path):
    from conftest import run_cli

    from gpt2kit.data import usable_cpus

    (tmp_path / "a.txt").write_text("hello world\n" * 500)
    r = run_cli("prepare", tmp_path / "a.txt", "--out", tmp_path / "out", "--num-proc", "100000")
    assert r.returncode == 0, r.stderr[-500:]
    assert f"num_proc 100000 is more than the {usable_cpus()} usable CPUs; using {usable_cpus()}" in r.stderr


def test_stale_temp_files_of_dead_writers_removed(tmp_path):
    import subprocess

    from gpt2kit.fileio import atomic_dir

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / f"out.tmp{dead.pid}").mkdir()  # a killed run's temp dir
    (tmp_path / f"out.tmp{os.getppid()}").mkdir()  # a live process's: left alone
    (out / f"train.bin.tmp{dead.pid}").write_bytes(b"x")
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "meta.json"), "w").close()
    assert sorted(os.listdir(tmp_path)) == ["out", f"out.tmp{os.getppid()}"]
    assert sorted(os.listdir(out)) == ["meta.json"]
