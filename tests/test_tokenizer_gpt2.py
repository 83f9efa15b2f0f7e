"""GPT-2 BPE: golden ids, tiktoken fast path == pure-Python reference, streaming, specials."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenization import get_tokenizer
from gpt2kit.tokenization.reference_bpe import ReferenceBPE

TOK = get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def ref():
    return ReferenceBPE()


def test_golden_ids():
    assert TOK.encode("hello world") == [31373, 995]
    assert TOK.encode("") == []
    assert TOK.encode("The dog") == [464, 3290]
    assert (TOK.n_vocab, TOK.eot_token) == (50257, 50256)
    assert TOK.decode([464, 3290, 373, 1043]) == "The dog was found"


def test_special_token_semantics():
    with pytest.raises(GPT2KitError, match="allow"):
        TOK.encode("a<|endoftext|>b")
    assert TOK.encode("a<|endoftext|>b", allowed_special="all") == [64, 50256, 65]
    assert TOK.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    assert TOK.encode("<|endoftext|>", disallowed_special=()) == [27, 91, 437, 1659, 5239, 91, 29]
    assert TOK.encode_ordinary("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]


@pytest.mark.parametrize("name", ["tinyshakespeare.txt", "zh/tang300.txt", "zh/song100.txt"])
def test_fast_path_equals_reference_on_shared_corpora(shared_data, ref, name):
    text = (shared_data / name).read_text(encoding="utf-8")
    ids = TOK.encode_ordinary(text)
    assert ids == ref.encode(text)
    assert TOK.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_and_reference_on_arbitrary_text(ref, text):
    ids = TOK.encode_ordinary(text)
    assert ids == ref.encode(text)
    clean = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert TOK.decode(ids) == clean


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab 中文字😀🎉é\n")) | st.characters(), min_size=1))
def test_stream_decoder_never_splits_characters(text):
    ids = TOK.encode_ordinary(text)
    dec = TOK.stream_decoder()
    pieces = [dec.push(t) for t in ids] + [dec.flush()]
    assert "".join(pieces) == TOK.decode(ids)
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in TOK.decode(ids)


def test_emoji_split_across_tokens_streams_whole():
    text = "🎉中"
    ids = TOK.encode_ordinary(text)
    assert len(ids) > 2  # the emoji's 4 bytes span several tokens
    dec = TOK.stream_decoder()
    pieces = [dec.push(t) for t in ids]
    assert [p for p in pieces if p] == ["🎉", "中"]


def test_lone_surrogate_encodes_as_replacement_char():
    import tiktoken  # noqa: F401  (the engine; the reference must agree with it)

    assert TOK.encode_ordinary("a\ud800b") == TOK.encode_ordinary("a\ufffdb")
    assert ReferenceBPE().encode("a\ud800b") == TOK.encode_ordinary("a\ufffdb")


def test_encode_batch_equals_encode():
    texts = ["hello world", "中文", "", "a" * 100]
    assert TOK.encode_batch(texts) == [TOK.encode(t) for t in texts]


def test_out_of_range_ids_rejected():
    with pytest.raises(GPT2KitError):
        TOK.decode([50257])


def test_explain_shows_pieces_and_merges(ref):
    steps = ref.explain("hello world")
    assert [s["piece"] for s in steps] == ["hello", " world"]
    assert steps[0]["ids"] == [31373] and steps[1]["ids"] == [995]
    assert steps[0]["merges"][-1][2] == ["hello"]
