"""Every tokenizer kind: round trips, references (tiktoken, HF tokenizers), streaming, save/load.

References nobody here wrote: tiktoken (gpt2 fast path vs OpenAI's algorithm in
ReferenceBPE), HF tokenizers' BertWordPieceTokenizer (bert ids) and BertNormalizer
(what an uncased BERT keeps of a text).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenization import (
    BertTokenizer, BPETokenizer, CharTokenizer, GPT2Tokenizer, StreamDecoder, WordTokenizer,
    build_tokenizer, get_tokenizer, load_tokenizer, train_bpe, unknown_rate,
)
from gpt2kit.tokenization.char import UNK_TEXT

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = {"en": DATA / "tinyshakespeare.txt", "tang": DATA / "zh" / "tang300.txt", "song": DATA / "zh" / "song100.txt"}

# A corpus written here, so the hypothesis tests run without shared/.
CORPUS = """床前明月光，疑是地上霜。
举头望明月，低头思故乡。
%
《春晓》
作者：孟浩然
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。
我很感谢你的热情。今天天气很好，我们去公园散步吧！
First Citizen:
Before we proceed any further, hear me speak.
All: Speak, speak. 3.14 apples, naïve café — “quotes” and emoji 😀🎉.
"""
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Arbitrary Unicode (no lone surrogates: they are not text), biased towards the corpus' characters.
TEXT = st.text(st.one_of(st.sampled_from(sorted(set(CORPUS)) + [" ", "\n", "\t", "\r"]), st.characters(exclude_categories=["Cs"])), max_size=60)


def shared(name: str) -> str:
    p = SHARED[name]
    if not p.exists():
        pytest.skip(f"shared data {p} not present (CI clones the repo next to shared/)")
    return p.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text(CORPUS * 3, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def bpe(corpus_file, tmp_path_factory) -> BPETokenizer:
    return train_bpe([corpus_file], vocab_size=400, out=tmp_path_factory.mktemp("bpe") / "tok")


@pytest.fixture(scope="module")
def bert_vocab(corpus_file, tmp_path_factory) -> Path:
    """A real WordPiece vocab.txt, trained by HF tokenizers on the corpus."""
    from tokenizers import BertWordPieceTokenizer

    ref = BertWordPieceTokenizer()
    ref.train([str(corpus_file)], vocab_size=300, min_frequency=1, show_progress=False)
    d = tmp_path_factory.mktemp("bert")
    ref.save_model(str(d))
    return d / "vocab.txt"


@pytest.fixture(scope="module")
def shared_bpe(tmp_path_factory) -> BPETokenizer:
    files = [p for p in SHARED.values() if p.exists()]
    if not files:
        pytest.skip("shared data not present")
    return train_bpe(files, 3000)


@pytest.fixture(scope="module")
def kinds(bpe, bert_vocab) -> dict:
    return {
        "gpt2": GPT2Tokenizer(),
        "char": build_tokenizer("char", [CORPUS], eot=True),
        "word": build_tokenizer("word", [CORPUS], eot=True),
        "bpe": bpe,
        "bert": get_tokenizer(f"bert:{bert_vocab}"),
    }


ALL_KINDS = ["gpt2", "char", "word", "bpe", "bert"]


# -- what each kind may lose ------------------------------------------------------------
def assert_exact_except_unknowns(tok, text: str, out: str) -> None:
    """char and word: one U+FFFD per character missing from the vocabulary, everything else exact."""
    known = set(tok.chars) if isinstance(tok, CharTokenizer) else {w for w in tok.words if len(w) == 1}
    assert len(out) == len(text), (text, out)
    for a, b in zip(text, out):
        assert b == a or (b == UNK_TEXT and a not in known), (text, out)


def bert_expected(text: str, lowercase: bool = True) -> str:
    """What a BERT vocab keeps of text: HF's BertNormalizer per line (newlines are [SEP]), spaces dropped."""
    from tokenizers.normalizers import BertNormalizer

    norm = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    return "\n".join(re.sub(r"\s", "", norm.normalize_str(line)) for line in text.split("\n"))


def assert_bert_roundtrip(tok: BertTokenizer, text: str) -> None:
    ids = tok.encode_ordinary(text)
    out = tok.decode(ids)
    expected = bert_expected(text, tok.lowercase)
    got = "\n".join(re.sub(r"\s", "", line) for line in out.split("\n"))
    # each [UNK] stands for one or more characters of a word
    pattern = "".join("(?:.+?)" if c == UNK_TEXT else re.escape(c) for c in got)
    assert re.fullmatch(pattern, expected, flags=re.S), (text, out, expected)
    if tok.unk_token not in ids:  # decode's spacing is faithful: its text encodes to the same ids
        assert tok.encode_ordinary(out) == ids, (text, out)


# -- round trips on the shared English and Chinese files ----------------------------------
@pytest.mark.parametrize("name", ["en", "tang", "song"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_roundtrip_shared_files(kind, name, kinds, shared_bpe, tmp_path):
    text = shared(name)
    if kind in ("char", "word"):
        tok = build_tokenizer(kind, [text])  # vocabulary from this very file: no unknowns
        ids = tok.encode(text)
        assert unknown_rate(tok, ids) == 0.0
        assert tok.decode(ids) == text
    elif kind == "bert":
        from tokenizers import BertWordPieceTokenizer

        ref = BertWordPieceTokenizer()
        ref.train([str(SHARED[name])], vocab_size=4000, show_progress=False)
        ref.save_model(str(tmp_path))
        tok = get_tokenizer(f"bert:{tmp_path / 'vocab.txt'}")
        sample = text[:20000]
        assert tok.encode_ordinary(sample) == ref.encode(sample.replace("\n", " [SEP] "), add_special_tokens=False).ids
        assert_bert_roundtrip(tok, sample)
    else:
        tok = kinds["gpt2"] if kind == "gpt2" else shared_bpe
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_bpe_learns_whole_chinese_characters(shared_bpe):
    shared("tang")
    assert [shared_bpe.decode([i]) for i in shared_bpe.encode("明月，春风")] in (["明月", "，", "春风"], ["明", "月", "，", "春", "风"])


def test_bpe_equals_openai_algorithm_on_trained_merges(bpe, shared_bpe):
    """HF's BPE and OpenAI's encoder.py algorithm (ReferenceBPE) agree on a trained vocabulary."""
    from gpt2kit.tokenization.reference_bpe import ReferenceBPE

    for tok, text in ((bpe, CORPUS), (shared_bpe, shared("tang"))):
        assert tok.encode(text) == ReferenceBPE.from_hf(tok._hf).encode(text)


# -- arbitrary Unicode ---------------------------------------------------------------------
@HYP
@given(text=TEXT)
def test_hypothesis_roundtrip_exact_gpt2_bpe(kinds, text):
    for kind in ("gpt2", "bpe"):
        tok = kinds[kind]
        assert tok.decode(tok.encode(text)) == text, kind


@HYP
@given(text=TEXT)
def test_hypothesis_roundtrip_char_word(kinds, text):
    for kind in ("char", "word"):
        tok = kinds[kind]
        ids = tok.encode(text)
        assert_exact_except_unknowns(tok, text, tok.decode(ids))
        assert unknown_rate(tok, ids) == (ids.count(tok.unk_token) / len(ids) if ids else 0.0)


@HYP
@given(text=TEXT)
def test_hypothesis_roundtrip_bert(kinds, text):
    assert_bert_roundtrip(kinds["bert"], text)


# -- bert ids equal HF tokenizers' BertWordPieceTokenizer ----------------------------------
SMALL_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "我", "很", "感", "谢", "你", "的", "热", "情", "。", "，", "！",
               ",", ".", "!", "'", "hello", "hel", "##lo", "##l", "world", "un", "##aff", "##able", "the", "a", "##s", "3",
               "##14", "14", "cafe", "naive", "Hello", "##😀", "😀", "s"]
BERT_TEXTS = ["我很感谢你的热情。", "Hello, world! unaffable", "the cafe naïve CAFÉ 3.14 hellos", "helo hell hello😀😀 x",
              "我\n很\n\n感谢 the world", "  ", "", "\n", "a" * 150, "日本語 カタカナ"]


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("small") / "vocab.txt"
    p.write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return p


def _hf_ids(ref, text: str) -> list[int]:
    # GPT2-Chinese writes newlines as [SEP] before tokenizing; HF extracts '[SEP]' as the special token.
    return ref.encode(text.replace("\n", " [SEP] "), add_special_tokens=False).ids


@pytest.mark.parametrize("lowercase", [True, False])
def test_bert_ids_equal_hf_bertwordpiece(small_vocab, lowercase):
    from tokenizers import BertWordPieceTokenizer

    ref = BertWordPieceTokenizer(str(small_vocab), lowercase=lowercase)
    tok = get_tokenizer(f"{'bert' if lowercase else 'bert-cased'}:{small_vocab}")
    for text in BERT_TEXTS:
        assert tok.encode_ordinary(text) == _hf_ids(ref, text), text
        if "\n" not in text:
            assert tok.encode_ordinary(text) == ref.encode(text, add_special_tokens=False).ids
    # special-token text is text for encode_ordinary, and the special token when allowed (as HF always does)
    text = "我[UNK] [SEP]hello[CLS]"
    assert tok.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids
    assert tok.encode_ordinary("[SEP]") == [tok.unk_token] * 3  # '[', 'sep', ']' are not in this vocab
    assert tok.n_vocab == len(SMALL_VOCAB)
    assert tok.eot_token == SMALL_VOCAB.index("[CLS]")
    assert tok.unk_token == SMALL_VOCAB.index("[UNK]")


@HYP
@given(text=st.text(st.sampled_from(sorted(set("".join(SMALL_VOCAB[5:]).replace("#", "")) | set(" \n\tXé好")))))
def test_bert_ids_equal_hf_hypothesis(small_vocab, text):
    from tokenizers import BertWordPieceTokenizer

    tok = get_tokenizer(f"bert:{small_vocab}")
    assert tok.encode_ordinary(text) == _hf_ids(BertWordPieceTokenizer(str(small_vocab)), text)
    assert_bert_roundtrip(tok, text)


def test_bert_decode_joins_pieces(small_vocab):
    tok = get_tokenizer(f"bert:{small_vocab}")
    ids = tok.encode("我很感谢你的热情。\nHello, world! unaffable 3.14 x好")
    pieces = [SMALL_VOCAB[i] for i in ids]
    assert pieces == ["我", "很", "感", "谢", "你", "的", "热", "情", "。", "[SEP]", "hello", ",", "world", "!",
                      "un", "##aff", "##able", "3", ".", "14", "[UNK]", "[UNK]"]
    assert tok.decode(ids) == "我很感谢你的热情。\nhello,world!unaffable 3.14\ufffd\ufffd"


def test_bert_vocab_errors(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_text("[PAD]\na\n", encoding="utf-8")
    with pytest.raises(GPT2KitError, match=r"\[UNK\]"):
        get_tokenizer(f"bert:{p}")
    with pytest.raises(GPT2KitError, match="not found"):
        get_tokenizer(f"bert:{tmp_path / 'missing.txt'}")


# -- BPE training -------------------------------------------------------------------------
def _hf_model(directory) -> dict:
    return json.loads((Path(directory) / "hf_tokenizer.json").read_text(encoding="utf-8"))["model"]


def test_bpe_training_is_reproducible(corpus_file, tmp_path):
    a = train_bpe([corpus_file], 400, tmp_path / "a")
    b = train_bpe([corpus_file], 400, tmp_path / "b")
    # a separate process: Rust's hash maps are seeded per process
    code = "import sys; from gpt2kit.tokenization import train_bpe; train_bpe([sys.argv[1]], 400, sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    subprocess.run([sys.executable, "-c", code, str(corpus_file), str(tmp_path / "c")], check=True, env=env)
    ma, mb, mc = _hf_model(tmp_path / "a"), _hf_model(tmp_path / "b"), _hf_model(tmp_path / "c")
    assert ma["vocab"] == mb["vocab"] == mc["vocab"]
    assert ma["merges"] == mb["merges"] == mc["merges"]
    c = load_tokenizer(tmp_path / "c")
    assert a.encode(CORPUS) == b.encode(CORPUS) == c.encode(CORPUS)
    assert a.n_vocab == 400 and a.eot_token == 0


def test_bpe_special_token_and_errors(bpe, tmp_path):
    assert bpe.encode("a<|endoftext|>b", allowed_special="all")[1] == bpe.eot_token
    ordinary = bpe.encode_ordinary("<|endoftext|>")
    assert bpe.eot_token not in ordinary and bpe.decode(ordinary) == "<|endoftext|>"
    with pytest.raises(GPT2KitError, match="allowed_special"):
        bpe.encode("<|endoftext|>")
    with pytest.raises(GPT2KitError, match="not found"):
        get_tokenizer(f"bpe:{tmp_path / 'nope'}")
    with pytest.raises(GPT2KitError, match="at least 257"):
        train_bpe([tmp_path], 100)
    with pytest.raises(GPT2KitError, match="not found"):
        train_bpe([tmp_path / "missing.txt"], 300)


def test_bpe_opens_hf_tokenizer_json(bpe, tmp_path):
    bpe._hf.save(str(tmp_path / "tokenizer.json"))  # HF's own file name, as save_pretrained writes it
    for spec in (f"bpe:{tmp_path}", f"bpe:{tmp_path / 'tokenizer.json'}"):
        assert get_tokenizer(spec).encode(CORPUS) == bpe.encode(CORPUS)


# -- char and word vocabularies -------------------------------------------------------------
def test_char_min_freq_unknown_and_eot():
    tok = CharTokenizer.build(["aab\nb!"], min_freq=2, eot=True)
    assert tok.chars == ["a", "b"] and tok.unk_token == 2 and tok.eot_token == 3 and tok.n_vocab == 4
    ids = tok.encode("abc<|endoftext|>", allowed_special="all")
    assert ids == [0, 1, 2, 3]
    assert tok.decode(ids) == "ab\ufffd<|endoftext|>"
    assert unknown_rate(tok, ids) == 0.25
    if SHARED["en"].exists():
        assert CharTokenizer.build([shared("en")]).n_vocab == 66  # nanoGPT's 65 characters + the unknown id


def test_word_vocab_fallback_and_unknowns():
    tok = WordTokenizer.build(["我们喜欢诗歌。我们喜欢诗歌。今天\n", "诗"], min_freq=2)
    # words seen twice, plus characters seen twice; '今'/'天' (once) are unknown
    # by count as a piece (ties by text): the words twice, '诗' once alone, then characters only seen inside words
    assert tok.words == ["。", "喜欢", "我们", "诗歌", "诗", "们", "喜", "我", "欢", "歌"]
    ids = tok.encode("我们爱诗歌今天")
    assert tok.decode(ids) == "我们\ufffd诗歌\ufffd\ufffd"
    assert unknown_rate(tok, ids) == pytest.approx(3 / 5)
    ids = tok.encode("歌诗")  # jieba's one word '歌诗' is not in the vocabulary: spelt by characters
    assert [tok.words[i] for i in ids] == ["歌", "诗"]
    with pytest.raises(GPT2KitError, match="min_freq"):
        WordTokenizer.build(["x"], min_freq=0)


def test_word_keeps_whitespace_exactly():
    tok = build_tokenizer("word", [CORPUS, "\r\n\t"])
    text = "First  Citizen:\r\n\t我很感谢你的热情。 \n\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.unk_token not in ids
    assert [tok.words[i] for i in tok.encode(" \r\n")] == [" ", "\r\n"]  # jieba's piece for CRLF


def test_unknown_rate_counts_unknown_ids():
    tok = CharTokenizer.build(["ab"])
    assert unknown_rate(tok, tok.encode("abcd")) == 0.5
    assert unknown_rate(tok, []) == 0.0
    assert unknown_rate(GPT2Tokenizer(), [1, 2, 3]) == 0.0


# -- streaming decode ----------------------------------------------------------------------
def _stream(tok, ids) -> list[str]:
    dec = StreamDecoder(tok)
    pieces = [dec.push(t) for t in ids]
    return pieces + [dec.flush()]


@HYP
@given(text=TEXT)
def test_stream_decoder_never_splits_a_character(kinds, text):
    for kind in ALL_KINDS:
        tok = kinds[kind]
        ids = tok.encode_ordinary(text)
        pieces = _stream(tok, ids)
        full = tok.decode(ids)
        assert "".join(pieces) == full, kind
        # a piece has U+FFFD only where the whole decode has one: no character was cut
        assert sum(p.count(UNK_TEXT) for p in pieces) == full.count(UNK_TEXT), kind


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_stream_decoder_chinese(kinds, kind):
    tok = kinds[kind]
    text = "春眠不觉晓，处处闻啼鸟。😀🎉"
    ids = tok.encode(text)
    pieces = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text  # every character is in each vocabulary built from CORPUS
    if kind in ("gpt2", "bpe"):  # byte-level: some tokens are part of a character, and are held
        assert any(not _is_utf8(tok.token_bytes(i)) for i in ids)
        assert "" in pieces[:-1]


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# -- save / load ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_save_load_roundtrip(kinds, kind, tmp_path):
    tok = kinds[kind]
    tok.save(tmp_path / "tok")
    for loaded in (load_tokenizer(tmp_path / "tok"), get_tokenizer(str(tmp_path / "tok"))):
        assert type(loaded) is type(tok)
        assert loaded.n_vocab == tok.n_vocab
        assert loaded.eot_token == tok.eot_token and loaded.unk_token == tok.unk_token
        assert loaded.encode(CORPUS) == tok.encode(CORPUS)
        assert [loaded.token_bytes(i) for i in range(min(tok.n_vocab, 500))] == [tok.token_bytes(i) for i in range(min(tok.n_vocab, 500))]
    # a checkpoint directory holding tokenizer/
    tok.save(tmp_path / "ckpt" / "tokenizer")
    assert load_tokenizer(tmp_path / "ckpt").encode(CORPUS) == tok.encode(CORPUS)


def test_corpus_kinds_need_a_corpus():
    for kind in ("char", "word"):
        with pytest.raises(GPT2KitError, match="built from a corpus"):
            get_tokenizer(kind)


# -- CLI --------------------------------------------------------------------------------
def test_cli_tokenizer_train_and_tokenize(corpus_file, bpe, tmp_path, capsys):
    from gpt2kit.cli import main

    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus_file), "--kind", "bpe", "--vocab-size", "400", "--out", str(out)]) == 0
    assert _hf_model(out) == json.loads(bpe._hf.to_str())["model"]
    capsys.readouterr()
    assert main(["tokenize", "我很感谢你的热情", "--tokenizer", f"bpe:{out}", "--ids-only"]) == 0
    assert json.loads(capsys.readouterr().out) == load_tokenizer(out).encode("我很感谢你的热情")
    assert main(["tokenizer", "train", str(corpus_file), "--kind", "word", "--min-freq", "2", "--out", str(tmp_path / "w")]) == 0
    assert load_tokenizer(tmp_path / "w").words == WordTokenizer.build([corpus_file.read_text(encoding="utf-8")], min_freq=2).words


def test_cli_tokenize_explain_gpt2(capsys):
    from gpt2kit.cli import main
    from gpt2kit.tokenization.reference_bpe import ReferenceBPE

    assert main(["tokenize", "我很感谢你的热情", "--tokenizer", "gpt2", "--explain"]) == 0
    out = capsys.readouterr().out
    steps = ReferenceBPE().explain("我很感谢你的热情")
    assert len(steps) == 1 and f"ids: {steps[0]['ids']}" in out
    n_merges = len(steps[0]["merges"])
    assert len(re.findall(r"^\s+merge\s+\d+", out, flags=re.M)) == n_merges > 0
    assert str(GPT2Tokenizer().encode("我很感谢你的热情")) in out


def test_cli_errors(capsys):
    from gpt2kit.cli import main

    assert main(["tokenize", "x", "--tokenizer", "bpe:/nonexistent/dir"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpt2kit tokenizer train" in err


# -- prepare with every kind ------------------------------------------------------------------
def _prepared_ids(d: Path) -> list[int]:
    import numpy as np

    from gpt2kit.data import read_tokens

    return np.concatenate([read_tokens(str(d / f"{s}.bin")) for s in ("train", "val")]).tolist()


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "bert"])
def test_prepare_doc_sep_every_kind(kind, bpe, bert_vocab, tmp_path):
    from gpt2kit.data import prepare

    docs = [p.strip("\n") + "\n" for p in CORPUS.split("%\n")] * 4
    src = tmp_path / "poems.txt"
    src.write_text("%\n".join(docs), encoding="utf-8")
    spec = {"char": "char", "word": "word", "bpe": f"bpe:{bpe_dir(bpe, tmp_path)}", "bert": f"bert:{bert_vocab}"}[kind]
    r1 = prepare([str(src)], str(tmp_path / "p1"), spec, doc_sep="%", num_proc=1, progress=False)
    r2 = prepare([str(src)], str(tmp_path / "p2"), spec, doc_sep="%", num_proc=2, progress=False)
    tok = load_tokenizer(tmp_path / "p1")
    assert tok.kind == kind and tok.eot_token is not None  # char/word get <|endoftext|> when documents are delimited
    expect = [t for d in docs for t in tok.encode_ordinary(d) + [tok.eot_token]]
    assert _prepared_ids(tmp_path / "p1") == _prepared_ids(tmp_path / "p2") == expect
    assert r1.unknown_rate == r2.unknown_rate == (None if kind == "bpe" else unknown_rate(tok, expect))  # bpe has no unknowns
    assert json.loads((tmp_path / "p2" / "meta.json").read_text(encoding="utf-8"))["unknown_rate"] == r1.unknown_rate


def bpe_dir(bpe, tmp_path) -> Path:
    bpe.save(tmp_path / "bpe")
    return tmp_path / "bpe"


def test_prepare_reports_unknown_rate_with_min_freq(tmp_path, capsys):
    from gpt2kit.cli import main

    src = tmp_path / "t.txt"
    src.write_text(CORPUS, encoding="utf-8")
    assert main(["prepare", str(src), "--tokenizer", "char", "--min-freq", "2", "--out", str(tmp_path / "o")]) == 0
    tok = load_tokenizer(tmp_path / "o")
    rate = unknown_rate(tok, tok.encode(CORPUS))
    assert rate > 0.01 and tok.eot_token is None  # one file, no --doc-sep: nanoGPT's layout, no EOT
    out = capsys.readouterr().out
    assert f"unknown-token rate {rate:.4%}" in out and "lower --min-freq" in out


def test_word_build_parallel_equals_serial():
    docs = [CORPUS * 30, *CORPUS.split("\n")]  # one text long enough to be cut, and many short ones
    assert WordTokenizer.build(docs, num_proc=2).words == WordTokenizer.build(docs, num_proc=1).words


# -- a checkpoint carries its tokenizer ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "word", "bpe", "bert"])
def test_checkpoint_restores_tokenizer_and_generate_streams_it(kinds, kind, tmp_path, capsys):
    """`gpt2kit generate --model DIR` needs no --tokenizer, and prints the prompt + the greedy ids' decode."""
    import torch

    from gpt2kit import save_model
    from gpt2kit.cli import main
    from gpt2kit.config import GPTConfig
    from gpt2kit.generation import generate
    from gpt2kit.model import GPT

    tok = kinds[kind]
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=tok.n_vocab))
    save_model(model, tmp_path / "ckpt", tokenizer=tok)
    prompt = "我很感谢 hello"
    prompt_ids = tok.encode(prompt)
    ids = []
    for t in generate(model, prompt_ids, 30, temperature=0.0, stop_tokens=[tok.eot_token]):
        if t == tok.eot_token:
            break
        ids.append(t)
    assert main(["generate", prompt, "--model", str(tmp_path / "ckpt"), "--temperature", "0", "--max-new-tokens", "30"]) == 0
    full, shown = tok.decode(prompt_ids + ids), tok.decode(prompt_ids)
    assert full.startswith(shown)  # bert's decode re-spaces the prompt; the others give it back exactly
    assert shown == prompt or kind == "bert"
    assert capsys.readouterr().out == prompt + full[len(shown):] + "\n"


# -- jieba in linear time (issue 16 item 8) ------------------------------------------------------

_JIEBA_MIX = st.lists(st.one_of(st.sampled_from(sorted(set(CORPUS)) + [" ", "\r\n", "，", "。"]),
                                st.text(st.sampled_from(list("中文明月ab1")), min_size=1, max_size=12)), max_size=60)


@HYP
@given(parts=_JIEBA_MIX)
def test_word_segment_in_pieces_equals_jieba_whole(parts):
    """Feeding jieba bounded pieces (cut before a han/alphanumeric block) changes nothing while no
    block is longer than the limit: lowered here so that almost every text is cut."""
    import jieba

    import gpt2kit.tokenization.word as word

    text = "".join(parts)
    saved = word.BLOCK_CHARS
    word.BLOCK_CHARS = 12
    try:
        if all(len(b) <= 12 for b in jieba.re_han_default.findall(text)):
            assert word.segment(text) == list(word._jieba().cut(text))
    finally:
        word.BLOCK_CHARS = saved


@pytest.mark.parametrize("name", ["tang", "song"])
def test_word_segment_equals_jieba_on_shared_corpora(name):
    from gpt2kit.tokenization.word import _jieba, segment

    text = shared(name)
    assert segment(text) == list(_jieba().cut(text))
    assert segment(text, hmm=False) == list(_jieba().cut(text, HMM=False))


@pytest.mark.parametrize("unit", ["a", "中文", pytest.param("中", marks=pytest.mark.slow)])
def test_word_megabyte_run_without_spaces(unit):
    """A megabyte with no space or punctuation (minutes in jieba as a whole) segments in seconds;
    every piece but the block cuts is jieba's, and the pieces rebuild the text."""
    from gpt2kit.tokenization.word import BLOCK_CHARS, _jieba, segment

    text = unit * (1_000_000 // len(unit))
    words = segment(text)
    assert "".join(words) == text
    block = list(_jieba().cut(text[:BLOCK_CHARS]))
    assert words[: len(block)] == block
