"""The CLI: streamed generation from a checkpoint, and one-line errors with no traceback."""
import subprocess
import sys

import pytest


def run(*args, input=None):
    from conftest import cli_in_process

    return cli_in_process(*args, input=input)  # in this process (see conftest); the test below also runs a real one


def test_generate_from_checkpoint_is_seeded(tiny_checkpoint):
    from conftest import run_cli

    a = run_cli("generate", "Hello", "--model", tiny_checkpoint, "--max-new-tokens", 12, "--seed", 3)  # `python -m gpt2kit`
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


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    """A tiny checkpoint whose vocabulary is 10 ids, and a char tokenizer of 27 ids (more than the model's)."""
    import torch

    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT
    from gpt2kit.tokenization import CharTokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("vocab")
    save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=10)), d / "model")
    CharTokenizer(list("abcdefghijklmnopqrstuvwxyz")).save(d / "tok")
    return d / "model", d / "tok"


def test_load_refuses_a_bigger_tokenizer_naming_the_parameter(small_vocab_model):
    import gpt2kit

    model_dir, tok_dir = small_vocab_model
    with pytest.raises(gpt2kit.GPT2KitError) as e:
        gpt2kit.load(model_dir, tokenizer=str(tok_dir))
    assert str(e.value) == ("the tokenizer has 27 tokens but the model expects 10; "
                            "pass tokenizer=SPEC naming the model's own tokenizer")
    with pytest.raises(gpt2kit.GPT2KitError, match="tokenizer="):
        gpt2kit.load(model_dir, tokenizer=gpt2kit.get_tokenizer(str(tok_dir)), backend="numpy")
    r = run("generate", "abc", "--model", model_dir, "--tokenizer", tok_dir)
    assert r.returncode == 2 and r.stderr.strip().endswith("pass --tokenizer SPEC naming the model's own tokenizer")


def test_load_returns_the_checked_pair(tiny_checkpoint):
    import torch

    import gpt2kit

    model, tok = gpt2kit.load(tiny_checkpoint, dtype="bfloat16")
    assert (tok.kind, tok.n_vocab, model.config.vocab_size) == ("gpt2", 50257, 50257)
    assert model.transformer.wte.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("message,shown", [
    ("use dtype='bfloat16' on a GPU", "use --dtype bfloat16 on a GPU"),
    ("pass allowed_special={'<|endoftext|>'} to encode it", "pass --allow-special to encode it"),
    ("device='cuda' was asked for; use device='cpu'", "--device cuda was asked for; use --device cpu"),
    ("or disallowed_special=() to encode it as text", "or disallowed_special=() to encode it as text"),
    ("digits= must be in 1..6", "--digits must be in 1..6"),
    ("drop device=/dtype= or use backend='torch'", "drop --device/--dtype or use --backend torch"),
])
def test_cli_maps_parameters_to_flags(message, shown):
    from gpt2kit.cli.common import cli_message

    assert cli_message(message) == shown


# -- the tokenizer interface that `gpt2kit tokenize` prints: pieces(ids), explain(text) ----------
def test_gpt2_pieces_and_explain():
    from gpt2kit.tokenization import get_tokenizer

    tok = get_tokenizer("gpt2")
    assert tok.pieces([2634, 47249, 222]) == ["é", "<f0 9f 98>", "<80>"]  # 😀 is two byte-level tokens
    steps = tok.explain("Hello world")
    assert [(s["piece"], s["ids"]) for s in steps] == [("Hello", [15496]), (" world", [995])]
    # OpenAI's vocab.bpe ranks: ll, ell, ello, Hello
    assert steps[0]["merges"] == [(("l", "l"), 41, ["H", "e", "ll", "o"]), (("e", "ll"), 439, ["H", "ell", "o"]),
                                  (("ell", "o"), 10853, ["H", "ello"]), (("H", "ello"), 15240, ["Hello"])]
    assert tok.explain("a<|endoftext|>b", allowed_special="all")[1] == {"special": "<|endoftext|>", "ids": [50256]}


def test_char_pieces_and_explain():
    from gpt2kit.tokenization import CharTokenizer

    tok = CharTokenizer(list("ab c"), eot=True)  # ids: a b ' ' c, then unknown 4, then <|endoftext|> 5
    assert tok.pieces([0, 4, 5]) == ["a", "\ufffd", "<|endoftext|>"]
    assert tok.explain("ab x<|endoftext|>", allowed_special="all") == [
        {"piece": "a", "ids": [0]}, {"piece": "b", "ids": [1]}, {"piece": " ", "ids": [2]}, {"piece": "x", "ids": [4]},
        {"special": "<|endoftext|>", "ids": [5]}]


def test_tokenize_explain_char_prints_the_split(tmp_path):
    from gpt2kit.tokenization import CharTokenizer

    CharTokenizer(list("ab"), unk=False).save(tmp_path / "tok")
    r = run("tokenize", "aba", "--tokenizer", tmp_path / "tok", "--explain")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:4] == ["each character is one piece (3 pieces):", '   "a" "b" "a"', '   "a"          -> "a"  [0]']


# -- a missing extra: one line naming the pip install that adds it -------------------------------
def _run_blocked(blocked: str, *args):
    """`gpt2kit ARGS` with `blocked` made unimportable, as in an install without its extra."""
    code = f"import sys; sys.modules[{blocked!r}] = None\nfrom gpt2kit.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_missing_extra_names_the_install(tmp_path):
    from conftest import assert_one_line_error

    src = tmp_path / "poems.txt"
    src.write_text("床前明月光\n疑是地上霜\n", encoding="utf-8")
    r = _run_blocked("jieba", "tokenizer", "train", src, "--kind", "word", "--out", tmp_path / "tok")
    assert_one_line_error(r, "the word tokenizer (分词) needs jieba, which is not installed: pip install 'gpt2kit[zh]'")
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("blocked,args,needle", [
    ("gguf", ["export", "MODEL", "--format", "gguf", "--out", "x.gguf"], "GGUF export needs gguf, which is not installed: pip install 'gpt2kit[interop]'"),
    ("gradio", ["serve", "--model", "MODEL"], "gpt2kit serve needs gradio, which is not installed: pip install 'gpt2kit[serve]'"),
    ("matplotlib", ["demo", "babygpt", "--out", "g.png"], "the babygpt graph needs matplotlib, which is not installed: pip install 'gpt2kit[plot]'"),
])
def test_missing_extra_fails_before_work(blocked, args, needle, tiny_checkpoint, tmp_path):
    from conftest import assert_one_line_error

    args = [tiny_checkpoint if a == "MODEL" else tmp_path / a if a.endswith((".gguf", ".png")) else a for a in args]
    r = _run_blocked(blocked, *args)
    assert_one_line_error(r, needle)
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_library_errors_name_parameters_and_the_cli_names_flags(capsys):
    import gpt2kit
    from gpt2kit.cli import main
    from gpt2kit.demos import addition

    with pytest.raises(gpt2kit.GPT2KitError, match=r"^digits= must be in 1\.\.6, got 7$"):
        addition.main(digits=7)
    assert main(["demo", "addition", "--digits", "7"]) == 2
    assert capsys.readouterr().err == "gpt2kit demo: error: --digits must be in 1..6, got 7\n"
