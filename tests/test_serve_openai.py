"""The server's OpenAI/vLLM surface beyond chat: /v1/completions' scoring and sampling fields, model
names, /tokenize and /detokenize, unknown routes and fields. A real `gpt2kit serve` on a tiny
random model with a 128-token context, driven by the official openai client; every value is
checked against a local full forward of the same weights."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server, one_torch_thread, random_checkpoint, tstr  # noqa: E402, F401

from gpt2kit import generate, load_model  # noqa: E402
from gpt2kit.chat_template import ChatTemplate  # noqa: E402
from gpt2kit.tokenization import get_tokenizer  # noqa: E402

KEY = "k-openai"
AUTH = {"Authorization": f"Bearer {KEY}"}
BLOCK = 128
TOK = get_tokenizer("gpt2")
# The engine before issue 11's one sampler ignores presence/frequency penalties and logit_bias; the new one applies
# them. Remove this marker once it has landed.


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("openai") / "tiny", block_size=BLOCK)


@pytest.fixture(scope="module")
def server(ckpt):
    s = Server("--model", str(ckpt), "--model-name", "tiny", "--model-name", "tiny-alias", "--api-key", KEY,
               "--no-page", "--threads", "1")
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(ckpt):
    return load_model(ckpt)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def log_softmax(model, ids: list[int]) -> torch.Tensor:
    """(T, V) next-token log-probabilities of a plain full forward (no cache)."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    return list(generate(model, ids, n, temperature=0))


# -- scoring: max_tokens 0 ------------------------------------------------------------------------

def test_max_tokens_0_with_echo_scores_the_prompt(server, local):
    prompt = "The quick brown fox jumps"
    ids = TOK.encode(prompt)
    r = client(server).completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=20)
    (ch,) = r.choices
    assert (ch.text, ch.finish_reason) == (prompt, "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 0)
    lp = ch.logprobs
    assert lp.tokens == [tstr(t) for t in ids] and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = log_softmax(local, ids)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, ids[i]].item(), abs=1e-5)
        top = torch.topk(ref[i - 1], 20)
        assert list(lp.top_logprobs[i]) == [tstr(j) for j in top.indices.tolist()]
        assert list(lp.top_logprobs[i].values()) == pytest.approx(top.values.tolist(), abs=1e-5)


def test_max_tokens_0_without_echo_and_a_full_context_prompt(server):
    c = client(server)
    r = c.completions.create(model="tiny", prompt="Hi", max_tokens=0, n=2)
    assert [(x.text, x.finish_reason) for x in r.choices] == [("", "length")] * 2 and r.usage.completion_tokens == 0
    full = c.completions.create(model="tiny", prompt=[5] * BLOCK, max_tokens=0, echo=True, logprobs=0)
    assert len(full.choices[0].logprobs.tokens) == BLOCK  # a prompt that fills the context can still be scored


# -- generation fields ---------------------------------------------------------------------------

def test_max_completion_tokens_is_max_tokens(server, local):
    c = client(server)
    a = c.completions.create(model="tiny", prompt="Tea", temperature=0, extra_body={"max_completion_tokens": 7})
    assert a.usage.completion_tokens == 7
    assert a.choices[0].text == TOK.decode(greedy_ids(local, TOK.encode("Tea"), 7))


def test_prompt_plus_max_tokens_past_the_context_is_400_with_the_numbers(server):
    c = client(server)
    ids = [TOK.encode(" a")[0]] * 100
    ok = c.completions.create(model="tiny", prompt=ids, max_tokens=BLOCK - 100, temperature=0)
    assert ok.usage.completion_tokens == BLOCK - 100  # up to the last position is fine
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny", prompt=ids, **({"max_tokens": 29} if field == "max_tokens" else {}),
                                 extra_body={"max_completion_tokens": 29} if field != "max_tokens" else None)
        err = e.value.body
        assert err["param"] == field
        assert all(str(x) in err["message"] for x in (BLOCK, 100, 29, BLOCK - 100))


def test_up_to_16_stop_strings(server):
    c = client(server)
    r = c.completions.create(model="tiny", prompt="x", max_tokens=3, extra_body={"stop": [f"zz{i}" for i in range(16)]})
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=3, extra_body={"stop": [f"zz{i}" for i in range(17)]})
    assert e.value.body["param"] == "stop" and "16" in e.value.body["message"]


BAD = [
    ({"logprobs": 21}, "logprobs"),
    ({"logit_bias": {"50257": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"11": 100.5}}, "logit_bias"),
    ({"logit_bias": {"11": "x"}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"max_tokens": BLOCK}, "max_tokens"),
]


@pytest.mark.parametrize("extra,param", BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
def test_new_fields_out_of_range_are_400_naming_the_field(server, extra, param):
    r = httpx.post(server.url + "/v1/completions", headers=AUTH, json={"model": "tiny", "prompt": "x", "max_tokens": 2, **extra}, timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"


def test_logit_bias_moves_and_forces_tokens(server, local):
    c = client(server)
    ids = TOK.encode("Once upon a")
    ref = log_softmax(local, ids)[-1]
    first, second = torch.topk(ref, 2).indices.tolist()
    base = c.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=1)
    assert base.choices[0].logprobs.tokens == [tstr(first)]
    banned = c.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=1, logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens == [tstr(second)]
    forced = c.completions.create(model="tiny", prompt=ids, max_tokens=3, seed=1, logit_bias={"11": 100})
    assert forced.choices[0].text == TOK.decode([11] * 3)


def penalized_greedy(model, ids: list[int], n: int, presence: float, frequency: float) -> list[int]:
    """OpenAI's definition by hand: logit[j] -= presence * (count[j] > 0) + frequency * count[j] over generated tokens."""
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out]))[0][0, -1].float()
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float() if out else torch.zeros_like(logits)
        out.append(int(torch.argmax(logits - presence * (counts > 0).float() - frequency * counts)))
    return out


@pytest.mark.parametrize("presence,frequency", [(2.0, 0.0), (0.0, 1.5), (-2.0, 0.0), (-2.0, 1.5)])
def test_presence_and_frequency_penalties_match_a_hand_computed_reference(server, local, presence, frequency):
    ids = TOK.encode("A B A B")
    want = penalized_greedy(local, ids, 30, presence, frequency)
    assert want != greedy_ids(local, ids, 30)  # greedy repeats tokens here, so the penalties change the output
    r = client(server).completions.create(model="tiny", prompt=ids, max_tokens=30, temperature=0, logprobs=0,
                                          presence_penalty=presence, frequency_penalty=frequency)
    assert r.choices[0].logprobs.tokens == [tstr(t) for t in want]


# -- model names ---------------------------------------------------------------------------------

def test_model_names_aliases_and_the_path(server, ckpt):
    c = client(server)
    cards = c.models.list().data
    assert [m.id for m in cards] == ["tiny", "tiny-alias", str(ckpt)]
    assert all(m.model_extra["context_length"] == BLOCK for m in cards)
    for name in ("tiny", "tiny-alias", str(ckpt)):
        r = c.completions.create(model=name, prompt="Hi", max_tokens=1)
        assert r.model == "tiny"  # responses name the primary id
        assert c.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="tiny2", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found" and "tiny-alias" in e.value.body["message"]


# -- /tokenize and /detokenize -----------------------------------------------------------------------

def test_tokenize_and_detokenize_round_trip(server):
    text = "Hello world, naïve café 😀<|endoftext|>"
    r = httpx.post(server.url + "/tokenize", headers=AUTH, json={"model": "tiny", "prompt": text, "add_special_tokens": True}, timeout=60)
    ids = TOK.encode(text, allowed_special="all")
    assert r.json() == {"count": len(ids), "max_model_len": BLOCK, "tokens": ids}
    back = httpx.post(server.url + "/detokenize", headers=AUTH, json={"model": "tiny", "tokens": ids}, timeout=60)
    assert back.json() == {"prompt": text}
    strs = httpx.post(server.url + "/tokenize", headers=AUTH, json={"prompt": "Hi there", "return_token_strs": True}, timeout=60).json()
    assert strs["token_strs"] == ["Hi", " there"]


def test_tokenize_messages_is_the_chat_prompt(server):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for gen in (True, False):
        r = httpx.post(server.url + "/tokenize", headers=AUTH, json={"messages": msgs, "add_generation_prompt": gen}, timeout=60)
        assert r.json()["tokens"] == TOK.encode(ChatTemplate().render(msgs, gen), allowed_special="all")


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ("/detokenize", {"tokens": [50257]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_tokenize_errors(server, path, body, param):
    r = httpx.post(server.url + path, headers=AUTH, json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_tokenize_is_behind_the_key_and_the_body_limit(server):
    assert httpx.post(server.url + "/tokenize", json={"prompt": "x"}, timeout=60).status_code == 401
    r = httpx.post(server.url + "/tokenize", headers=AUTH, json={"prompt": "a" * (2 * 1024 * 1024 + 1)}, timeout=60)
    assert r.status_code == 400 and "2 MB" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/detokenize", headers=AUTH, json={"model": "gpt-9", "tokens": [1]}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# -- routes and fields -----------------------------------------------------------------------------

def test_unknown_routes_name_the_endpoints_and_wrong_methods_are_405(server):
    r = httpx.get(server.url + "/v1/embeddings", headers=AUTH, timeout=60)
    msg = r.json()["error"]["message"]
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert all(e in msg for e in ("POST /v1/chat/completions", "POST /v1/completions", "POST /tokenize", "POST /detokenize"))
    r = httpx.get(server.url + "/v1/chat/completions", headers=AUTH, timeout=60)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_unknown_fields_are_ignored_and_logged_once(server):
    for _ in range(3):
        r = httpx.post(server.url + "/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 1, "frobnicate_me": 1}, timeout=60)
        assert r.status_code == 200
    log = server.stderr()
    assert log.count("frobnicate_me") == 1 and "ignoring the unknown request field 'frobnicate_me'" in log
