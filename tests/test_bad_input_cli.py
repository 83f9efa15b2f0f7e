"""Issue 16's CLI bad-input table: each case exits 2 with one line on stderr, no traceback, and writes nothing."""
from __future__ import annotations

import os

import pytest

from conftest import assert_one_line_error, cli_in_process, run_cli

TEXT = "To be, or not to be, that is the question.\n" * 20


def _text_file(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text(TEXT)
    return p


# name -> (args built from (checkpoint, tmp_path, request), the needle of the one line)
CASES = {
    "numpy-negative-seed": (lambda ck, t, rq: ["generate", "Hi", "--model", ck, "--backend", "numpy", "--seed", "-5"],
                            "seed must be an integer in [0, 2**64), got -5"),
    "max-new-tokens-2e9": (lambda ck, t, rq: ["generate", "Hi", "--model", ck, "--max-new-tokens", "2000000000"],
                           "at most 1000000 tokens per sample, got 2000000000"),
    "cuda-on-cpu-build": (lambda ck, t, rq: ["generate", "Hi", "--model", ck, "--device", "cuda"],
                          "--device cuda was asked for but CUDA is not available"),
    "bogus-device": (lambda ck, t, rq: ["generate", "Hi", "--model", ck, "--device", "bogus"], "--device bogus is not a torch device"),
    "empty-stop": (lambda ck, t, rq: ["generate", "Hi", "--model", ck, "--stop", ""], "stop strings must be non-empty strings"),
    "eval-out-dir": (lambda ck, t, rq: ["eval", "perplexity", "--model", ck, "--data", _text_file(t), "--out", t],
                     "is a directory; give a file path"),
    "eval-out-readonly": (lambda ck, t, rq: ["eval", "perplexity", "--model", ck, "--data", _text_file(t),
                                             "--out", rq.getfixturevalue("readonly_dir") / "r.json"], "is not writable"),
    "tokenizer-train-readonly": (lambda ck, t, rq: ["tokenizer", "train", _text_file(t), "--kind", "char",
                                                    "--out", rq.getfixturevalue("readonly_dir") / "tok"], "is not writable"),
    "serve-port-70000": (lambda ck, t, rq: ["serve", "--model", ck, "--port", "70000"], "expected a port in 0..65535 (0 = any free port), got 70000"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line(case, tiny_checkpoint, tmp_path, request):
    if case == "cuda-on-cpu-build":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    build, needle = CASES[case]
    args = build(tiny_checkpoint, tmp_path, request)
    before = sorted(os.listdir(tmp_path))
    cli = run_cli if case == "empty-stop" else cli_in_process  # one case through a real `python -m gpt2kit`
    r = cli(*args)
    assert_one_line_error(r, needle)
    assert r.stdout == ""  # nothing printed first (generate used to echo the prompt before refusing --stop '')
    assert sorted(os.listdir(tmp_path)) == before  # and nothing written
