"""POST /v1/chat/completions end to end: a real `gpt2kit serve` on a tiny random model (128-token context),
driven by the official openai client, LangChain's ChatOpenAI and litellm. Replies are checked against
gpt2kit.generate on the chat template's rendering of the messages, logprobs against a full forward."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server, one_torch_thread, random_checkpoint  # noqa: E402, F401

from gpt2kit import generate, load_model  # noqa: E402
from gpt2kit.chat_template import DEFAULT_STOP, ChatTemplate  # noqa: E402
from gpt2kit.streaming import stream_text  # noqa: E402
from gpt2kit.tokenization import get_tokenizer  # noqa: E402

KEY = "k-chat"
BLOCK = 128
TOK = get_tokenizer("gpt2")
MSGS = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("chat") / "tiny", block_size=BLOCK)


@pytest.fixture(scope="module")
def server(ckpt):
    s = Server("--model", str(ckpt), "--api-key", KEY, "--no-page", "--threads", "1")
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(ckpt):
    return load_model(ckpt)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def prompt_ids(messages) -> list[int]:
    return TOK.encode(ChatTemplate().render(messages), allowed_special="all")


def local_reply(model, messages, n_tokens: int, stop=()) -> str:
    """What the server should answer: greedy ids from gpt2kit.generate, cut at EOT and the stop strings, leading space dropped."""
    ids = list(generate(model, prompt_ids(messages), n_tokens, temperature=0))
    return "".join(stream_text(ids, TOK, [*stop, *DEFAULT_STOP])).lstrip()


def streamed(chunks) -> tuple[list[str], list[str | None], list]:
    texts, finish, rest = {}, {}, []
    for ch in chunks:
        rest.append(ch)
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            finish[c.index] = c.finish_reason or finish.get(c.index)
    return [texts[i] for i in sorted(texts)], [finish[i] for i in sorted(finish)], rest


def test_greedy_chat_equals_generate_on_the_rendered_prompt(server, local):
    r = client(server).chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0)
    (ch,) = r.choices
    assert ch.message.role == "assistant" and ch.message.content == local_reply(local, MSGS, 20)
    assert ch.finish_reason == "length" and r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    n = len(prompt_ids(MSGS))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n, 20, n + 20)


def test_stream_equals_non_stream_for_a_seed(server):
    c = client(server)
    kw = dict(model="tiny", messages=MSGS, max_tokens=30, seed=7, temperature=0.9)
    full = c.chat.completions.create(**kw)
    texts, finish, chunks = streamed(c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert texts == [full.choices[0].message.content] and finish == [full.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_raw_sse_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": MSGS, "max_tokens": 3, "stream": True}, timeout=60) as r:
        events = r.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert bodies[-1]["choices"][0]["finish_reason"] == "length"


def test_seed_reproduces_and_n2_rows_differ(server):
    c = client(server)
    a, b, d = (c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=15, seed=s).choices[0].message.content
               for s in (3, 3, 4))
    assert a == b != d
    two = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=15, seed=3, n=2)
    assert [x.index for x in two.choices] == [0, 1] and two.choices[0].message.content == a  # choice 0 is the n=1 answer
    assert two.choices[0].message.content != two.choices[1].message.content
    texts, _, _ = streamed(c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=15, seed=3, n=2, stream=True))
    assert texts == [x.message.content for x in two.choices]


def test_stop_cuts_the_reply(server, local):
    c = client(server)
    full = local_reply(local, MSGS, 20)
    word = full.split()[2]
    r = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0, stop=[word])
    assert r.choices[0].message.content == local_reply(local, MSGS, 20, stop=[word]) == full[:full.index(word)].lstrip()
    assert r.choices[0].finish_reason == "stop"


def test_default_max_tokens_is_the_rest_of_the_context(server, local):
    msgs = [{"role": "user", "content": "Count"}]
    r = client(server).chat.completions.create(model="tiny", messages=msgs, temperature=0)
    assert r.choices[0].message.content == local_reply(local, msgs, BLOCK - len(prompt_ids(msgs)))
    if r.choices[0].finish_reason == "length":
        assert r.usage.prompt_tokens + r.usage.completion_tokens == BLOCK


def test_logprobs_equal_a_full_forward(server, local):
    r = client(server).chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    ids = prompt_ids(MSGS)
    gen = list(generate(local, ids, 6, temperature=0))
    assert [bytes(e.bytes) for e in content] == [TOK.token_bytes(t) for t in gen]
    with torch.no_grad():
        ref = torch.log_softmax(local(torch.tensor([ids + gen]))[0][0], dim=-1)[len(ids) - 1:]
    for i, (e, t) in enumerate(zip(content, gen)):
        assert e.logprob == pytest.approx(ref[i, t].item(), abs=1e-5)
        top = torch.topk(ref[i], 5)
        assert [bytes(x.bytes) for x in e.top_logprobs] == [TOK.token_bytes(j) for j in top.indices.tolist()]
        assert [x.logprob for x in e.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-5)
    plain = client(server).chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, logprobs=True)
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)


def test_content_parts_and_developer_role(server, local):
    parts = [{"role": "developer", "content": "You answer briefly."},
             {"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]}]
    r = client(server).chat.completions.create(model="tiny", messages=parts, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == local_reply(local, MSGS, 8)


BAD = [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x " * 130}]}, "messages"),  # the prompt alone fills the context
    ({"max_tokens": 120}, "max_tokens"),  # prompt + max_tokens > 128
    ({"max_completion_tokens": 120}, "max_completion_tokens"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stop": [str(i) for i in range(17)]}, "stop"),
    ({"logit_bias": {"99999": 5}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"temperature": 2.1}, "temperature"),
    ({"n": 0}, "n"),
]


@pytest.mark.parametrize("extra,param", BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
def test_bad_chat_requests_are_400_naming_the_field(server, extra, param):
    body = {"model": "tiny", "messages": MSGS, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body, timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_the_openai_client_raises_bad_request(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    assert "messages[0].role" in e.value.body["message"] and "system, user, assistant" in e.value.body["message"]


def test_a_stored_template_is_used(tmp_path):
    """A checkpoint whose tokenizer carries its own template: the server renders with it and stops at its stop strings."""
    from fastapi.testclient import TestClient

    from gpt2kit.serve import build_app

    chatml = ('{%- set stop_strings = ["<|im_end|>"] -%}{% for m in messages %}<|im_start|>{{ m.role }}{{ "\\n" }}'
              '{{ m.content }}<|im_end|>{{ "\\n" }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ "\\n" }}{% endif %}')
    tok = get_tokenizer("gpt2")
    tok.chat_template = chatml
    tok.save(tmp_path / "tok")
    model = load_model(random_checkpoint(tmp_path / "m", block_size=BLOCK))
    app = build_app(model, get_tokenizer(str(tmp_path / "tok")), model_id="m", page=False)
    with TestClient(app) as tc:
        r = tc.post("/tokenize", json={"messages": MSGS})
        want = "<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        assert r.json()["tokens"] == TOK.encode(want)
        reply = tc.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 10, "temperature": 0}).json()
    ids = list(generate(model, TOK.encode(want), 10, temperature=0))
    assert reply["choices"][0]["message"]["content"] == "".join(stream_text(ids, TOK, ["<|im_end|>"])).lstrip()


# -- third-party clients -------------------------------------------------------------------------

def test_langchain_chat_openai_invoke_and_stream(server, local):
    lc = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed (pip install langchain-openai)")
    from langchain_core.messages import HumanMessage, SystemMessage

    llm = lc.ChatOpenAI(base_url=server.url + "/v1", api_key=KEY, model="tiny", temperature=0, max_tokens=12, max_retries=0)
    msgs = [SystemMessage(MSGS[0]["content"]), HumanMessage(MSGS[1]["content"])]
    want = local_reply(local, MSGS, 12)
    assert llm.invoke(msgs).content == want
    assert "".join(chunk.content for chunk in llm.stream(msgs)) == want


@pytest.mark.slow  # importing litellm alone takes ~15 s here
def test_litellm_completion(server, local, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its import would otherwise fetch a price list online
    litellm = pytest.importorskip("litellm", reason="litellm is not installed (optional)")
    r = litellm.completion(model="openai/tiny", api_base=server.url + "/v1", api_key=KEY, messages=MSGS, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == local_reply(local, MSGS, 12)
