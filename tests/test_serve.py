"""The server, end to end: a real `gpt2kit serve` on a loopback port, driven by the official openai client.

Two tiny checkpoints: a random-weight one (its outputs are checked against gpt2kit.generate,
and the batched decode step against transformers), and a scripted one whose weights make it
emit a known token sequence (stop strings, UTF-8 splits and EOT give exact expected text).
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server, byte_tokens, one_torch_thread, random_checkpoint, scripted_model, tstr  # noqa: E402, F401

from gpt2kit import generate, load_model, save_model  # noqa: E402
from gpt2kit.sampling import SamplingParams  # noqa: E402
from gpt2kit.tokenization import get_tokenizer  # noqa: E402

KEY = "test-key-123"
CAP = 1000
TOK = get_tokenizer("gpt2")
EOT = TOK.eot_token
SCRIPT_TEXT = "€😀é Hello world. The end"
SCRIPT = byte_tokens(TOK, "€😀é") + TOK.encode(" Hello world. The end") + [EOT]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(ckpt):
    s = Server("--model", str(ckpt), "--api-key", KEY, "--max-concurrency", "2", "--max-queue", "1",
               "--max-tokens-cap", str(CAP), "--no-page", "--threads", "1")
    yield s
    s.close()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve") / "scripted"
    save_model(scripted_model(SCRIPT), d, tokenizer=TOK)
    s = Server("--model", str(d), "--no-page", "--threads", "1")
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(ckpt):
    return load_model(ckpt)


def client(server, key=KEY, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, **kw)


def local_text(model, prompt: str, n_tokens: int, **kw) -> str:
    return TOK.decode(list(generate(model, TOK.encode(prompt), n_tokens, **kw)))


# -- completions -------------------------------------------------------------------------------

def test_greedy_completion_equals_local_generate(server, local):
    prompt = "The Moon's orbit around Earth has"
    r = client(server).completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    (choice,) = r.choices
    assert choice.text == local_text(local, prompt, 12, temperature=0)
    assert choice.finish_reason == "length" and choice.index == 0
    n_prompt = len(TOK.encode(prompt))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert r.model == "tiny" and r.object == "text_completion"


def test_stream_equals_non_stream(server):
    c = client(server)
    full = c.completions.create(model="tiny", prompt="Hello there", max_tokens=40, seed=3, temperature=0.9, top_p=0.95)
    chunks = list(c.completions.create(model="tiny", prompt="Hello there", max_tokens=40, seed=3, temperature=0.9, top_p=0.95,
                                       stream=True, stream_options={"include_usage": True}))
    texts = [ch.choices[0].text for ch in chunks if ch.choices]
    assert "".join(texts) == full.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40 == full.usage.completion_tokens


def test_raw_sse_framing_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": "Hi", "max_tokens": 3, "stream": True, "seed": 1}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert [b["choices"][0]["finish_reason"] for b in bodies][-1] == "length"


def test_seed_reproduces_and_differs_across_seeds(server):
    c = client(server)
    a, b, d = (c.completions.create(model="tiny", prompt="Once", max_tokens=20, seed=s).choices[0].text for s in (5, 5, 6))
    assert a == b and a != d


def test_n2_rows_are_distinct_and_reproducible(server):
    c = client(server)
    two = c.completions.create(model="tiny", prompt="Hello", max_tokens=20, seed=11, n=2)
    assert [ch.index for ch in two.choices] == [0, 1]
    assert two.choices[0].text != two.choices[1].text  # each row has its own generator
    assert two.usage.completion_tokens == 40 and two.usage.prompt_tokens == 1
    again = c.completions.create(model="tiny", prompt="Hello", max_tokens=20, seed=11, n=2, stream=True)
    joined = ["", ""]
    for ch in again:
        for x in ch.choices:
            joined[x.index] += x.text
    assert joined == [x.text for x in two.choices]


def test_prompt_forms_token_ids_and_lists(server, local):
    c = client(server)
    ids = TOK.encode("Good morning")
    by_text = c.completions.create(model="tiny", prompt="Good morning", max_tokens=8, seed=2).choices[0].text
    by_ids = c.completions.create(model="tiny", prompt=ids, max_tokens=8, seed=2).choices[0].text
    assert by_text == by_ids
    many = c.completions.create(model="tiny", prompt=["Good morning", "Tea"], max_tokens=8, temperature=0)
    many_ids = c.completions.create(model="tiny", prompt=[ids, TOK.encode("Tea")], max_tokens=8, temperature=0)
    assert [x.text for x in many.choices] == [x.text for x in many_ids.choices]
    assert [x.text for x in many.choices] == [local_text(local, p, 8, temperature=0) for p in ("Good morning", "Tea")]
    assert many.usage.prompt_tokens == len(ids) + len(TOK.encode("Tea"))


def test_greedy_top_k_and_repetition_penalty_match_local_generate(server, local):
    c = client(server)
    greedy = c.completions.create(model="tiny", prompt="A B C", max_tokens=10, temperature=0).choices[0].text
    top1 = c.completions.create(model="tiny", prompt="A B C", max_tokens=10, seed=4, extra_body={"top_k": 1}).choices[0].text
    assert greedy == top1 == local_text(local, "A B C", 10, temperature=0)
    pen = c.completions.create(model="tiny", prompt="A B C", max_tokens=10, temperature=0,
                               extra_body={"repetition_penalty": 1.5}).choices[0].text
    assert pen == local_text(local, "A B C", 10, temperature=0, repetition_penalty=1.5) != greedy


def test_logprobs_and_echo(server, local):
    c = client(server)
    r = c.completions.create(model="tiny", prompt="Tea time", max_tokens=5, temperature=0, logprobs=3, echo=True)
    ch = r.choices[0]
    lp = ch.logprobs
    ids = TOK.encode("Tea time")
    gen = list(generate(local, ids, 5, temperature=0))
    assert ch.text == "Tea time" + TOK.decode(gen)
    assert lp.tokens == [tstr(t) for t in ids + gen]
    assert lp.text_offset == [0, 3, 8, *[8 + len(TOK.decode(gen[:i])) for i in range(1, 5)]]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        ref = torch.log_softmax(local(torch.tensor([ids + gen]))[0][0], dim=-1)  # (T, V)
    for i, t in enumerate(ids + gen):
        if i:
            assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, t].item(), abs=1e-4)
            top = torch.topk(ref[i - 1], 3)
            assert list(lp.top_logprobs[i]) == [tstr(j) for j in top.indices.tolist()]
            assert list(lp.top_logprobs[i].values()) == pytest.approx(top.values.tolist(), abs=1e-4)
    # greedy picks the most likely token, so each generated token heads its own top list
    assert all(lp.tokens[i] == next(iter(lp.top_logprobs[i])) for i in range(len(ids), len(ids) + 5))


def test_models_endpoint_and_unknown_model(server, ckpt):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny", str(ckpt)]  # the directory's name, and the --model path
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"


# -- scripted model: exact text ------------------------------------------------------------------

def test_scripted_text_eot_and_utf8_chunks(scripted):
    c = client(scripted)
    r = c.completions.create(model="scripted", prompt=[EOT], max_tokens=60, temperature=2.0)
    assert r.choices[0].text == SCRIPT_TEXT and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(SCRIPT)  # the end-of-text token counts, but is not text
    chunks = [ch.choices[0].text for ch in c.completions.create(model="scripted", prompt=[EOT], max_tokens=60, stream=True)]
    # the multi-byte characters arrive as byte tokens; every chunk holds whole characters only
    assert [x for x in chunks if x][:4] == ["€", "😀", "é", " Hello"]
    assert "".join(chunks) == SCRIPT_TEXT and "\ufffd" not in "".join(chunks)


@pytest.mark.parametrize("stop,expected", [("world", "€😀é Hello "), (["zzz", "lo wor"], "€😀é Hel"), ("😀", "€")])
def test_stop_strings(scripted, stop, expected):
    c = client(scripted)
    r = c.completions.create(model="scripted", prompt=[EOT], max_tokens=60, stop=stop)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
    s = c.completions.create(model="scripted", prompt=[EOT], max_tokens=60, stop=stop, stream=True)
    assert "".join(ch.choices[0].text for ch in s) == expected


def test_length_finish_and_n2_on_script(scripted):
    r = client(scripted).completions.create(model="scripted", prompt=[EOT], max_tokens=7, n=2)
    assert [(x.text, x.finish_reason) for x in r.choices] == [("€😀", "length")] * 2


def test_logprob_offsets_on_byte_tokens(scripted):
    r = client(scripted).completions.create(model="scripted", prompt=[EOT], max_tokens=5, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.tokens == ["bytes:\\xe2", "bytes:\\x82", "bytes:\\xac", "bytes:\\xf0", "bytes:\\x9f"]
    assert lp.text_offset == [0, 0, 0, 1, 1]
    assert all(x > -1e-3 for x in lp.token_logprobs)  # the script's token is certain


# -- validation ----------------------------------------------------------------------------------

BAD = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": ["ok", ""]}, "prompt"),
    ({"prompt": [0] * 1024}, "prompt"),  # prompt tokens == the context
    ({"prompt": " a" * 1100}, "prompt"),  # > the context
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": CAP + 1}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.1}, "temperature"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.01}, "top_p"),
    ({"prompt": [1, 50257]}, "prompt"),
    ({"prompt": [[1], [-1]]}, "prompt"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "stop": [str(i) for i in range(17)]}, "stop"),  # at most 16
    ({"prompt": "x", "stop": ["é" * 4097]}, "stop"),  # at most 4096 characters each
    ({"prompt": "x", "top_k": 1.5}, "top_k"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
def test_invalid_requests_get_400_with_an_openai_error(server, body, param):
    extra = {k: v for k, v in body.items() if k not in ("prompt", "max_tokens", "temperature", "top_p", "n", "logprobs", "stop")}
    std = {k: v for k, v in body.items() if k not in extra}
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="tiny", **{"max_tokens": 5, **std}, extra_body=extra or None)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and err["message"]


def test_nan_temperature_is_400(server):
    # JSON has no NaN; Python clients send the non-standard literal, which must not slip through
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                   content=b'{"model": "tiny", "prompt": "x", "temperature": NaN}', timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_body_over_2mb_is_400(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="tiny", prompt="a" * (2 * 1024 * 1024 + 1), max_tokens=1)
    assert "2 MB" in e.value.body["message"]
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, content=b"{" * 10, timeout=60)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_api_key(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="wrong").completions.create(model="tiny", prompt="x", max_tokens=1)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, timeout=60).status_code == 401
    assert httpx.get(server.url + "/v1/models", timeout=60).status_code == 401
    assert httpx.get(server.url + "/health", timeout=60).status_code == 200  # health stays public


def test_cli_errors_are_one_line(ckpt, tmp_path):
    import socket
    import subprocess
    import sys

    from conftest import cli_in_process
    from serve_helpers import SRC

    def serve(*args):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
        return subprocess.run([sys.executable, "-m", "gpt2kit", "serve", "--no-page", *args], capture_output=True, text=True, env=env, timeout=600)

    r = serve("--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("gpt2kit serve: error: model not found")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli_in_process("serve", "--no-page", "--model", str(ckpt), "--host", "127.0.0.1", "--port", str(port))  # saves an import
    assert r.returncode == 2 and r.stderr == f"gpt2kit serve: error: cannot listen on 127.0.0.1:{port}: Address already in use; pick another --port or --host\n"
    r = cli_in_process("serve", "--no-page", "--model", str(ckpt), "--max-concurrency", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "positive integer" in r.stderr


# -- concurrency ---------------------------------------------------------------------------------

# A request that runs for many seconds on any CPU: 4 rows x 1000 tokens, each step sorting 4 x 50257 logits for top_p.
LONG = dict(model="tiny", prompt="Long", max_tokens=CAP, n=4, top_p=0.99)


def _wait_until(pred, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def test_429_beyond_concurrency_plus_queue(server):
    c = client(server)
    streams = [c.completions.create(**LONG, stream=True) for _ in range(3)]
    try:
        assert server.health()["active"] == 3  # 2 generating + 1 queued
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model="tiny", prompt="x", max_tokens=1)
        assert e.value.status_code == 429 and e.value.body["code"] == "rate_limit_exceeded"
        assert e.value.response.headers["retry-after"] == "1"  # the openai client waits that long before retrying
    finally:
        for s in streams:
            s.close()
    assert _wait_until(lambda: server.health()["active"] == 0, 60) is not None
    assert c.completions.create(model="tiny", prompt="x", max_tokens=1).choices[0].finish_reason == "length"


def test_disconnect_cancels_generation(server):
    before = server.health()["cancelled_total"]
    stream = client(server).completions.create(**LONG, stream=True)
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert server.health()["active"] == 1
    stream.close()  # the client goes away mid-stream
    # the wait only bounds a hang (a loaded CI runner is slow); cancelled_total says it was cut short
    assert _wait_until(lambda: server.health()["active"] == 0, 60) is not None
    assert server.health()["cancelled_total"] == before + 1  # cancelled, not run to the end


def test_non_streamed_disconnect_also_cancels(server):
    before = server.health()["cancelled_total"]
    with pytest.raises(openai.APITimeoutError):
        client(server, timeout=0.5).completions.create(**LONG)
    assert _wait_until(lambda: server.health()["active"] == 0, 60) is not None
    assert server.health()["cancelled_total"] == before + 1


def test_concurrent_requests_are_batched_and_unchanged(server, local):
    """Requests that run together (different prompts and lengths, so rows join and leave the
    batch at different steps) decode exactly as each prompt alone (greedy: no sampling noise)."""
    prompts = ["One", "Two words here", "A somewhat longer prompt than the others"]
    kw = [dict(model="tiny", prompt=p, max_tokens=30 + 10 * i, temperature=0) for i, p in enumerate(prompts)]

    async def together():
        ac = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        async with ac:
            return await asyncio.gather(*[ac.completions.create(**k) for k in kw])

    got = [r.choices[0].text for r in asyncio.run(together())]
    assert got == [local_text(local, k["prompt"], k["max_tokens"], temperature=0) for k in kw]


# -- the engine's batched step against the reference ----------------------------------------------

def _engine_texts(model, jobs, together: bool) -> list[list[str]]:
    """Each job's choice texts, from jobs submitted in one step (together) or one after another."""
    from gpt2kit.serve.engine import Engine

    async def run(engine, batch):
        with engine._cond:  # hold the engine thread so every job is admitted in the same step
            gens = [engine.submit(j) for j in batch]
        out = []
        for g, j in zip(gens, batch):
            texts = [""] * j.num_rows
            async for pieces in g:
                for p in pieces:
                    texts[p.index] += p.text
            out.append(texts)
        return out

    engine = Engine(model, TOK, max_batch=8, max_concurrency=8, max_queue=0)
    try:
        if together:
            return asyncio.run(run(engine, jobs))
        return [asyncio.run(run(engine, [j]))[0] for j in jobs]
    finally:
        engine.close()


def test_engine_rows_finishing_at_different_times_keep_the_others_exact(local):
    """Jobs admitted in one step and leaving at different steps (so rows move between KV slots)
    decode exactly as each job alone (greedy, so float noise of other batch sizes cannot flip a draw)."""
    from gpt2kit.serve.rows import Job

    jobs = [Job([TOK.encode(p)], max_tokens=m, params=SamplingParams(temperature=0.0), n=n)
            for p, m, n in [("Short", 3, 1), ("Middle one", 25, 2), ("The longest of them", 12, 1), ("x", 40, 1)]]
    together = _engine_texts(local, jobs, together=True)
    assert together == _engine_texts(local, jobs, together=False)
    assert together == [[local_text(local, TOK.decode(j.prompts[0]), j.max_tokens, temperature=0)] * j.n for j in jobs]


def test_engine_seeded_rows_are_reproducible(local):
    from gpt2kit.serve.rows import Job

    jobs = [Job([TOK.encode("Seeded")], max_tokens=30, params=SamplingParams(temperature=0.9, top_p=0.9), seed=s, n=2) for s in (1, 1, 2)]
    a, b, c = _engine_texts(local, jobs, together=False)
    assert a == b and a != c and a[0] != a[1]


def test_inverse_cdf_sampler_draws_from_the_filtered_distribution():
    """sample_rows against the exact distribution (softmax of logits / T, top-k kept) on 8 tokens."""
    import numpy as np

    from gpt2kit.sampling import RowSampler, row_generator, sample_rows

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -0.5, 1.5]])
    T, k = 0.8, 5
    z = logits[0].numpy() / T
    keep = np.argsort(-z)[:k]
    p = np.zeros(8)
    p[keep] = np.exp(z[keep] - z[keep].max())
    p /= p.sum()

    g = row_generator(123, 0, "cpu")
    rows = [RowSampler(SamplingParams(T, k), g, [], 8) for _ in range(4)]
    draws = [t for _ in range(5000) for t in sample_rows(logits.expand(4, 8), rows)]
    freq = np.bincount(draws, minlength=8) / len(draws)
    assert freq[p == 0].sum() == 0  # filtered tokens are never drawn
    assert np.abs(freq - p).max() < 0.01  # 20000 draws: sd of each frequency < 0.0036
