"""Generation: greedy equals transformers' generate, batching, seeds, stops, the context window."""
import pytest
import torch

from conftest import hf_model, ours_from_hf
from gpt2kit import generate, generate_text
from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.generation import TextStreamer
from gpt2kit.model import GPT
from gpt2kit.tokenization import get_tokenizer


@pytest.fixture(scope="module")
def pair():
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257, seed=3)
    return hf, ours_from_hf(hf)


def test_greedy_equals_hf_generate(pair):
    hf, ours = pair
    prompt = [464, 3290, 318, 257]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                          pad_token_id=50256, eos_token_id=None)
    assert list(generate(ours, prompt, 20, temperature=0)) == ref[0, len(prompt):].tolist()


def test_batched_greedy_equals_unbatched(pair):
    _, ours = pair
    prompts = [[464, 3290, 318, 257, 1332], [15496], [40, 588, 257]]
    alone = [list(generate(ours, p, 15, temperature=0)) for p in prompts]
    steps = list(generate(ours, prompts, 15, temperature=0))
    batched = [[s[i] for s in steps] for i in range(len(prompts))]
    assert batched == alone


def test_seed_reproduces_and_differs(pair):
    _, ours = pair
    a = list(generate(ours, [464], 20, seed=7, top_k=50))
    b = list(generate(ours, [464], 20, seed=7, top_k=50))
    c = list(generate(ours, [464], 20, seed=8, top_k=50))
    assert a == b and a != c
    rows = list(generate(ours, [464], 10, seed=7, num_samples=3))
    assert len(rows) == 10 and all(len(r) == 3 for r in rows)
    assert len({tuple(r[i] for r in rows) for i in range(3)}) == 3  # samples differ from each other


def test_beyond_context_window_crops_like_nanogpt():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()
    got = list(generate(m, [1, 2, 3, 4, 5], 40, temperature=0))
    seq = [1, 2, 3, 4, 5]
    with torch.no_grad():
        for _ in range(40):  # nanoGPT: condition on the last block_size tokens, no cache
            seq.append(int(m(torch.tensor([seq[-16:]]))[0][0, -1].argmax()))
    assert got == seq[5:]
    # and a batched, left-padded run across the window edge equals the rows alone
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9]]
    steps = list(generate(m, prompts, 30, temperature=0))
    assert [s[0] for s in steps] == list(generate(m, prompts[0], 30, temperature=0))
    assert [s[1] for s in steps] == list(generate(m, prompts[1], 30, temperature=0))


def test_stop_token_ends_row():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=20)).eval()
    free = list(generate(m, [1], 10, temperature=0))
    stop = free[3]
    got = list(generate(m, [1], 10, temperature=0, stop_tokens=[stop]))
    assert got == free[: free.index(stop) + 1]


@pytest.mark.parametrize("kw,msg", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_samples=0), "num_samples"),
])
def test_bad_arguments_rejected(pair, kw, msg):
    _, ours = pair
    with pytest.raises(GPT2KitError, match=msg):
        next(generate(ours, [1], **{"max_new_tokens": 5, **kw}))


def test_bad_prompts_rejected(pair):
    _, ours = pair
    for bad in ([], [50257], [-1], [[1], []]):
        with pytest.raises(GPT2KitError):
            next(generate(ours, bad, 5))


def test_text_streamer_stop_strings_and_holdback():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("Hello world. The end. More text")
    s = TextStreamer(tok, stop=["The end"])
    out = "".join(s.push(t) for t in ids if not s.stopped) + s.flush()
    assert out == "Hello world. " and s.stopped
    s = TextStreamer(tok, stop=["zzz"])
    assert "".join(s.push(t) for t in ids) + s.flush() == "Hello world. The end. More text"


def test_generate_text_stops_at_string(pair):
    _, ours = pair
    tok = get_tokenizer("gpt2")
    full = "".join(generate_text(ours, tok, "Hello", 30, temperature=0))
    assert len(full) > 4
    stop = full[2:4]
    cut = "".join(generate_text(ours, tok, "Hello", 30, temperature=0, stop=[stop]))
    assert cut == full[: full.index(stop)]
