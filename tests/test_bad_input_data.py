"""Bad output paths for prepare, convert and export: exit 2, one line, nothing written (issue 16 item 10)."""
import os

import pytest

from conftest import assert_one_line_error, cli_in_process as cli  # in this process: see conftest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~200 KB of text: its char-level token files alone overflow the 64 KiB full_disk_dir."""
    p = tmp_path_factory.mktemp("corpus") / "c.txt"
    p.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(4000)))
    return p


def _prepare(corpus, ckpt, out):
    return ("prepare", corpus, "--out", out, "--tokenizer", "char", "--num-proc", "1")


def _convert(corpus, ckpt, out):
    return ("convert", ckpt, "--out", out)


def _export(fmt, name):
    return lambda corpus, ckpt, out: ("export", ckpt, "--format", fmt, "--out", os.path.join(out, name) if name else out)


VERBS = {
    "prepare": _prepare,
    "convert": _convert,
    "export-hf": _export("hf", None),
    "export-gguf": _export("gguf", "m.gguf"),
    "export-llmc": _export("llmc", "m.bin"),
}


def _tree(root):
    return sorted(os.path.relpath(os.path.join(r, f), root) for r, ds, fs in os.walk(root) for f in fs + ds)


@pytest.mark.parametrize("verb", ["prepare", "convert"])
def test_out_is_a_file(verb, corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.write_text("keep me")
    r = cli(*VERBS[verb](corpus, tiny_checkpoint, out))
    assert_one_line_error(r, "not a directory" if verb == "convert" else "is a file")
    assert out.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("verb", list(VERBS))
def test_read_only_output_dir(verb, corpus, tiny_checkpoint, readonly_dir):
    out = readonly_dir / "out" if verb in ("prepare", "convert", "export-hf") else readonly_dir
    r = cli(*VERBS[verb](corpus, tiny_checkpoint, out))
    assert_one_line_error(r, "read-only file system")
    assert _tree(readonly_dir) == []


@pytest.mark.parametrize("verb", list(VERBS))
def test_full_disk(verb, corpus, tiny_checkpoint, full_disk_dir):
    out = full_disk_dir / "out" if verb in ("prepare", "convert", "export-hf") else full_disk_dir
    r = cli(*VERBS[verb](corpus, tiny_checkpoint, out))
    assert_one_line_error(r, "no space left on device")
    assert _tree(full_disk_dir) == []  # no partial output, no temp file
