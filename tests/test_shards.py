"""Streaming sharded prepare (issue 13): round trips, 1 vs N processes, kill -9 and resume, Parquet and
datasets input, the index, and bad input."""
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest

from conftest import assert_one_line_error, cli_in_process, run_cli
from gpt2kit import data, sources
from gpt2kit.data import TokenData, prepare, read_tokens
from gpt2kit.errors import GPT2KitError
from gpt2kit.shards import read_index
from gpt2kit.tokenization import get_tokenizer, load_tokenizer

STDLIB = sysconfig.get_paths()["stdlib"]


def _docs():
    names = ("argparse.py", "inspect.py", "typing.py")
    return [open(os.path.join(STDLIB, n), encoding="utf-8").read() for n in names] + ["Ünïcødé 中文 🎉", ""]


def _stream(out) -> list[int]:
    """Every token of a prepared dir in stream order (the index's shard order)."""
    index = read_index(str(out))
    return np.concatenate([read_tokens(index.path(s)) for s in index.shards]).tolist()


def _files(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiny read blocks, pieces and worker batches, so a small corpus crosses every boundary of the pipeline."""
    monkeypatch.setattr(sources, "READ_BYTES", 4096)
    monkeypatch.setattr(sources, "PIECE_CHARS", 1000)
    monkeypatch.setattr(data, "BATCH_CHARS", 5000)


def test_shards_round_trip_jsonl_and_text(tmp_path, small_pieces):
    docs = _docs()
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    (tmp_path / "t.txt").write_text(docs[1])
    r = prepare([str(tmp_path / "d.jsonl"), str(tmp_path / "t.txt")], str(tmp_path / "out"), "gpt2",
                shard_tokens=7000, num_proc=1, progress=False)
    tok = get_tokenizer("gpt2")
    want = [t for d in docs + [docs[1]] for t in tok.encode_ordinary(d) + [tok.eot_token]]
    assert _stream(tmp_path / "out") == want  # the stream is the documents' tokens, in order, each ended by EOT
    assert tok.decode(want) == "<|endoftext|>".join(docs + [docs[1]]) + "<|endoftext|>"
    index = read_index(str(tmp_path / "out"))
    n = -(-len(want) // 7000)
    assert [s.file for s in index.shards] == ["val_000000.bin"] + [f"train_{k:06d}.bin" for k in range(1, n)]
    assert [s.tokens for s in index.shards] == [7000] * (n - 1) + [len(want) - 7000 * (n - 1)]
    assert (r.val_tokens, r.train_tokens, r.shards) == (7000, len(want) - 7000, n)
    assert index.meta["documents"] == len(docs) + 1 and index.meta["complete"] is True
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl", "out", "t.txt"]  # OUT.partial is gone


def test_val_tokens_rule_and_one_shard_layout(tmp_path):
    text = open(os.path.join(STDLIB, "argparse.py"), encoding="utf-8").read()
    (tmp_path / "a.txt").write_text(text)
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "v"), "char", val_tokens=15000, shard_tokens=10000, progress=False)
    index = read_index(str(tmp_path / "v"))
    assert [(s.split, s.tokens) for s in index.shards[:3]] == [("val", 10000), ("val", 5000), ("train", 10000)]
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "one"), "char", progress=False)  # fits one shard: nanoGPT's split
    assert sorted(os.listdir(tmp_path / "one")) == ["meta.json", "tokenizer", "train.bin", "val.bin"]
    assert len(read_tokens(str(tmp_path / "one" / "train.bin"))) == int(len(text) * 0.9)
    assert _stream(tmp_path / "v") == _stream(tmp_path / "one")


def test_one_and_two_processes_byte_identical(tmp_path, small_pieces):
    for n, name in enumerate(("argparse.py", "inspect.py")):
        (tmp_path / f"{n}.txt").write_text(open(os.path.join(STDLIB, name), encoding="utf-8").read())
    for num_proc in (1, 2):
        prepare([str(tmp_path / "*.txt")], str(tmp_path / f"p{num_proc}"), "gpt2", shard_tokens=5000, num_proc=num_proc, progress=False)
    one, two = _files(tmp_path / "p1"), _files(tmp_path / "p2")
    assert len([f for f in one if f.endswith(".bin")]) > 3 and one == two
    tok = get_tokenizer("gpt2")
    want = [t for n in ("argparse.py", "inspect.py") for t in tok.encode(open(os.path.join(STDLIB, n), encoding="utf-8").read()) + [50256]]
    assert _stream(tmp_path / "p1") == want  # cuts between read blocks and pieces never change the tokens


def _big_text(tmp_path, mb: int):
    src = open(os.path.join(STDLIB, "inspect.py"), encoding="utf-8").read()
    p = tmp_path / "big.txt"
    p.write_text(src * (mb * 2**20 // len(src) + 1))
    return p


def test_kill_9_then_resume_is_byte_identical(tmp_path):
    src = _big_text(tmp_path, 6)
    prepare([str(src)], str(tmp_path / "ref"), "gpt2", shard_tokens=40_000, num_proc=2, progress=False)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", "prepare", str(src), "--out", str(out), "--shard-tokens", "40000",
                             "--num-proc", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = tmp_path / "out.partial" / "meta.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if index.exists() and json.loads(index.read_text())["shards"]:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads(index.read_text())["shards"])
    n_ref = len(read_index(str(tmp_path / "ref")).shards)
    assert 1 <= done < n_ref and not out.exists(), "the prepare finished before it could be killed"
    r = cli_in_process("prepare", src, "--out", out, "--shard-tokens", "40000", "--num-proc", "2", "--resume")
    assert r.returncode == 0, r.stderr[-1000:]
    assert _files(out) == _files(tmp_path / "ref")  # shards, tokenizer and meta.json
    assert sorted(os.listdir(tmp_path)) == ["big.txt", "out", "ref"]


def _interrupt_after(monkeypatch, n_shards):
    """Ctrl-C in the middle of a prepare, after n_shards shards are written (OUT.partial stays for resume)."""
    real = data._ShardWriter._flush

    def flush(self, *a, **k):
        if len(self.shards) == n_shards:
            raise KeyboardInterrupt
        real(self, *a, **k)

    monkeypatch.setattr(data._ShardWriter, "_flush", flush)


def test_ctrl_c_then_resume_and_mismatched_resume(tmp_path, monkeypatch, small_pieces):
    (tmp_path / "a.txt").write_text(open(os.path.join(STDLIB, "argparse.py"), encoding="utf-8").read())
    args = ([str(tmp_path / "a.txt")], str(tmp_path / "out"), "gpt2")
    prepare(*args, shard_tokens=3000, progress=False)
    ref = _files(tmp_path / "out")
    real_flush = data._ShardWriter._flush
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        prepare(*args, shard_tokens=3000, progress=False)
    partial = _files(tmp_path / "out.partial")
    assert "train_000001.bin" in partial and "train_000002.bin" not in partial
    monkeypatch.setattr(data._ShardWriter, "_flush", real_flush)
    with pytest.raises(GPT2KitError, match="prepared with shard_tokens"):  # the split rule would differ
        prepare(*args, shard_tokens=4000, resume=True, progress=False)
    text = (tmp_path / "a.txt").read_text()
    (tmp_path / "a.txt").write_text(text + "more\n")
    with pytest.raises(GPT2KitError, match="prepared with source_bytes"):  # the input changed
        prepare(*args, shard_tokens=3000, resume=True, progress=False)
    (tmp_path / "a.txt").write_text(text)
    r = cli_in_process("prepare", tmp_path / "a.txt", "--out", tmp_path / "out", "--tokenizer", "char", "--shard-tokens", "3000", "--resume")
    assert_one_line_error(r, "it was prepared with --tokenizer gpt2, not 'char'")
    assert _files(tmp_path / "out.partial") == partial and _files(tmp_path / "out") == ref  # nothing touched
    prepare(*args, shard_tokens=3000, resume=True, num_proc=2, progress=False)
    assert _files(tmp_path / "out") == ref and not (tmp_path / "out.partial").exists()


def test_parquet_file_and_builder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs()[:3] + [None, "last"]
    pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}), tmp_path / "d.parquet", row_group_size=2)
    tok = get_tokenizer("gpt2")
    want = [t for d in docs if d is not None for t in tok.encode_ordinary(d) + [tok.eot_token]]
    prepare([str(tmp_path / "d.parquet")], str(tmp_path / "a"), field="body", shard_tokens=20000, progress=False)
    assert _stream(tmp_path / "a") == want
    prepare([str(tmp_path / "d.parquet")], str(tmp_path / "b"), dataset="parquet", field="body", shard_tokens=20000, progress=False)
    assert _stream(tmp_path / "b") == want  # datasets' parquet builder over the same file


def test_saved_datasets_dir(tmp_path):
    import datasets

    docs = _docs()[:2] + ["short one"]
    datasets.Dataset.from_dict({"text": docs, "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(tmp_path / "dd"))
    tok = get_tokenizer("gpt2")
    want = [t for d in docs for t in tok.encode_ordinary(d) + [tok.eot_token]]
    prepare([str(tmp_path / "ds")], str(tmp_path / "a"), shard_tokens=5000, progress=False)
    prepare([], str(tmp_path / "b"), dataset=str(tmp_path / "dd"), split="train", shard_tokens=5000, progress=False)
    assert _stream(tmp_path / "a") == _stream(tmp_path / "b") == want
    with pytest.raises(GPT2KitError, match="has the splits train, not 'test'; pass split=NAME"):
        prepare([], str(tmp_path / "c"), dataset=str(tmp_path / "dd"), split="test", progress=False)


def test_char_vocab_from_a_stream(tmp_path, small_pieces):
    text = open(os.path.join(STDLIB, "argparse.py"), encoding="utf-8").read()
    (tmp_path / "a.txt").write_text(text)
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "out"), "char", shard_tokens=8000, num_proc=2, progress=False)
    tok = load_tokenizer(tmp_path / "out")
    assert tok.chars == sorted(set(text)) and tok.decode(_stream(tmp_path / "out")) == text


def test_old_single_file_layout_loads(tmp_path):
    """A data dir of gpt2kit before shards (meta.json without "shards"): train and eval read it as before."""
    ids = np.arange(3000) % 50
    data.write_tokens(str(tmp_path / "train.bin"), ids, 50)
    data.write_tokens(str(tmp_path / "val.bin"), ids[:500], 50)
    (tmp_path / "meta.json").write_text(json.dumps({"gpt2kit_data_version": 1, "n_vocab": 50, "train_tokens": 3000, "val_tokens": 500}))
    d = TokenData(str(tmp_path))
    x, _ = d.batch("train", 4, 16, (1, 2, 3))
    ix = np.random.Generator(np.random.PCG64([1, 2, 3])).integers(0, 3000 - 16, size=4)  # single-file gpt2kit's draw
    assert np.array_equal(x, np.stack([ids[i:i + 16] for i in ix]))
    from gpt2kit.evaluate import load_eval_tokens

    assert load_eval_tokens(str(tmp_path), None).tolist() == ids[:500].tolist()


def test_batches_span_shards_uniformly(tmp_path):
    """Each row is one window inside one shard, drawn in proportion to each shard's windows."""
    lens = [3000, 1000, 500, 20]  # the last is shorter than a window: never drawn
    shards = [{"file": "val_000000.bin", "split": "val", "tokens": 100, "max_id": 99}]
    data.write_tokens(str(tmp_path / "val_000000.bin"), np.arange(100), 50000)
    for k, n in enumerate(lens, 1):
        data.write_tokens(str(tmp_path / f"train_{k:06d}.bin"), 10000 * k + np.arange(n), 50000)  # the id says shard and offset
        shards.append({"file": f"train_{k:06d}.bin", "split": "train", "tokens": n, "max_id": 10000 * k + n - 1})
    (tmp_path / "meta.json").write_text(json.dumps({"gpt2kit_data_version": 2, "complete": True, "n_vocab": 50000, "shards": shards}))
    d = TokenData(str(tmp_path))
    hits = np.zeros(len(lens))
    for i in range(500):
        x, y = d.batch("train", 8, 32, (0, i, 0))
        assert np.array_equal(x[:, 1:], y[:, :-1])
        assert (np.diff(np.concatenate([x, y[:, -1:]], axis=1), axis=1) == 1).all()  # contiguous: never across shards
        np.add.at(hits, x[:, 0] // 10000 - 1, 1)
    windows = np.array([max(0, n - 32) for n in lens])
    assert hits[-1] == 0 and np.abs(hits / hits.sum() - windows / windows.sum()).max() < 0.03


# -- bad input: one line, naming the fix, nothing written ------------------------------------------------

def test_bad_input_prepare(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 100)
    r = cli_in_process("prepare", tmp_path / "nope.txt", "--out", tmp_path / "o")
    assert_one_line_error(r, "input not found")
    r = cli_in_process("prepare", "--out", tmp_path / "o")
    assert_one_line_error(r, "no input: give files, directories or globs, or dataset=NAME")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    r = cli_in_process("prepare", tmp_path / "d.parquet", "--out", tmp_path / "o")
    assert_one_line_error(r, "is not a readable Parquet file")
    r = run_cli("prepare", "--dataset", "HuggingFaceFW/fineweb-edu", "--name", "sample-10BT", "--out", tmp_path / "o",
                env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(r, "offline, download it first")
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "d.parquet"] + (["hf"] if (tmp_path / "hf").exists() else [])


def test_missing_data_extra_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b c"]}), tmp_path / "d.parquet")
    fake = tmp_path / "fake"
    for mod in ("pyarrow", "datasets"):
        (fake / mod).mkdir(parents=True)
        (fake / mod / "__init__.py").write_text(f'raise ImportError("No module named {mod}", name="{mod}")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    r = run_cli("prepare", tmp_path / "d.parquet", "--out", tmp_path / "o", env=env)
    assert_one_line_error(r, "reading Parquet needs pyarrow, which is not installed: pip install 'gpt2kit[data]'")
    r = run_cli("prepare", "--dataset", "some/name", "--out", tmp_path / "o", env=env)
    assert_one_line_error(r, "needs datasets, which is not installed: pip install 'gpt2kit[data]'")
    assert not (tmp_path / "o").exists()


CORRUPT = [
    (lambda m: m.update(shards=[{"file": "../etc/passwd", "split": "train", "tokens": 3}]), "the index is corrupt"),
    (lambda m: m.update(shards="x"), "the index is corrupt"),
    (lambda m: m["shards"][1].update(tokens=5), "holds 10000 tokens but meta.json says 5"),
    (lambda m: m.update(complete=False), "an interrupted prepare; finish it by running the same prepare with resume=True"),
]


def test_corrupt_index_is_one_line(tmp_path):
    (tmp_path / "a.txt").write_text(open(os.path.join(STDLIB, "argparse.py"), encoding="utf-8").read())
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "d"), "char", shard_tokens=10000, progress=False)
    good = json.loads((tmp_path / "d" / "meta.json").read_text())
    for edit, needle in CORRUPT:
        meta = json.loads(json.dumps(good))
        edit(meta)
        (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(GPT2KitError, match=needle.replace("(", r"\(")):
            TokenData(str(tmp_path / "d"))
    r = cli_in_process("train", "--data", tmp_path / "d", "--out", tmp_path / "run", "--device", "cpu", "--max-iters", "1")
    assert_one_line_error(r, CORRUPT[-1][1])  # the last edit, through the CLI
    (tmp_path / "d" / "meta.json").write_text("{not json")
    r = cli_in_process("eval", "perplexity", "--model", tmp_path / "nomodel", "--data", tmp_path / "d")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(GPT2KitError, match="is not valid JSON"):
        TokenData(str(tmp_path / "d"))
    assert not (tmp_path / "run").exists()
