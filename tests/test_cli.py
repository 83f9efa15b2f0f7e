"""The CLI: streamed generation from a checkpoint, and one-line errors with no traceback."""
import subprocess
import sys

import pytest


def run(*args, input=None):
    return subprocess.run([sys.executable, "-m", "gpt2kit", *map(str, args)], capture_output=True, text=True,
                          timeout=300, input=input)


def test_generate_from_checkpoint_is_seeded(tiny_checkpoint):
    a = run("generate", "Hello", "--model", tiny_checkpoint, "--max-new-tokens", 12, "--seed", 3)
    b = run("generate", "Hello", "--model", tiny_checkpoint, "--max-new-tokens", 12, "--seed", 3)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("Hello")
    g = run("generate", "Hello", "--model", tiny_checkpoint, "--max-new-tokens", 12, "--temperature", 0)
    import gpt2kit

    m, tok = gpt2kit.load_model(tiny_checkpoint), gpt2kit.get_tokenizer(str(tiny_checkpoint))
    expect = "Hello" + "".join(gpt2kit.generate_text(m, tok, "Hello", 12, temperature=0)) + "\n"
    assert g.stdout == expect
    u = run("generate", "--unconditional", "--num-samples", 2, "--model", tiny_checkpoint, "--max-new-tokens", 5, "--seed", 1)
    assert u.returncode == 0 and u.stdout.count("SAMPLE") == 2


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top-p"),
    (["--top-k", "0"], "top-k"),
    (["--max-new-tokens", "0"], "positive"),
    (["--model", "/no/such/dir"], "model not found"),
])
def test_bad_flags_one_line(tiny_checkpoint, args, needle):
    r = run("generate", "Hi", *(["--model", tiny_checkpoint] if "--model" not in args else []), *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_special_token_in_prompt_needs_flag(tiny_checkpoint):
    r = run("generate", "a<|endoftext|>b", "--model", tiny_checkpoint, "--max-new-tokens", 2)
    assert r.returncode == 2 and "--allow-special" in r.stderr and "Traceback" not in r.stderr
    r = run("generate", "a<|endoftext|>b", "--model", tiny_checkpoint, "--max-new-tokens", 2, "--allow-special")
    assert r.returncode == 0


def test_truncated_weights_one_line(tiny_checkpoint, tmp_path):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, d)
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[:1000])
    r = run("generate", "Hi", "--model", d)
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_interactive_loop(tiny_checkpoint):
    r = run("interactive", "--model", tiny_checkpoint, "--max-new-tokens", 4, "--seed", 0, input="Hello\n\n")
    assert r.returncode == 0
    assert r.stdout.count("Model prompt >>> ") == 3 and "Prompt should not be empty!" in r.stdout
