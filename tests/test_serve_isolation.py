"""One request must never hurt another (issue 16 item 1): poison requests next to real streams in flight.

The streams are greedy, so their text is exact whatever they are batched with; each must come out
the same with the poison requests running beside it as without them.
"""
from __future__ import annotations

import asyncio
import json

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server, random_checkpoint  # noqa: E402

from gpt2kit.sampling_params import SamplingParams  # noqa: E402
from gpt2kit.tokenization import get_tokenizer  # noqa: E402

TOK = get_tokenizer("gpt2")
STREAMS = [dict(prompt=p, max_tokens=40 + 5 * i, temperature=0) for i, p in enumerate(["One", "Two words", "A third prompt", "Four"])]
POISON = [  # (body, expected status, param named in the 400)
    ({"prompt": "x", "temperature": 1e-300, "seed": 2**64, "top_p": 1e-300, "repetition_penalty": 1e-300}, 400, None),
    ({"prompt": "x", "temperature": 1e-300}, 400, "temperature"),
    ({"prompt": "x", "repetition_penalty": 1e-300}, 400, "repetition_penalty"),
    ({"prompt": "x", "seed": 2**64}, 400, "seed"),
    ({"prompt": "x", "seed": -2**64}, 400, "seed"),
    ({"prompt": "x", "seed": 10**400}, 400, "seed"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server("--model", str(random_checkpoint(tmp_path_factory.mktemp("iso") / "tiny")), "--no-page", "--threads", "1",
               "--max-concurrency", "8")
    yield s
    s.close()


async def _stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event | None = None) -> str:
    text = ""
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            text += event["choices"][0]["text"]
            if started is not None:
                started.set()
    return text


async def _run(url: str, poison: list[dict]) -> tuple[list[str], list[httpx.Response]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        started = [asyncio.Event() for _ in STREAMS]
        streams = [asyncio.create_task(_stream(c, b, e)) for b, e in zip(STREAMS, started)]
        await asyncio.gather(*(e.wait() for e in started))  # every stream is generating
        # raw JSON text: 10**400 and 2**64 are not float64 values, and a client library would round them
        answers = await asyncio.gather(*(c.post("/v1/completions", content=json.dumps(b, ensure_ascii=False).encode(), headers={"content-type": "application/json"})
                                         for b in poison))
        return await asyncio.gather(*streams), answers


def test_poison_requests_get_their_error_and_streams_in_flight_are_unchanged(server):
    alone, _ = asyncio.run(_run(server.url, []))
    beside, answers = asyncio.run(_run(server.url, [b for b, _, _ in POISON]))
    assert beside == alone and all(alone)
    for (body, status, param), r in zip(POISON, answers):
        err = r.json()["error"]
        assert r.status_code == status and err["type"] == "invalid_request_error", (body, r.text)
        if param:
            assert err["param"] == param and param in err["message"]
    assert server.health()["active"] == 0


def test_tiny_top_p_is_served_greedy(server):
    greedy = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 12, "temperature": 0}, timeout=60).json()
    tiny = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 12, "top_p": 1e-300, "seed": 1}, timeout=60).json()
    assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"]


# -- the engine: a failure inside one request ends that request only ----------------------------

def _collect(engine, jobs):
    """Submit jobs in one engine step; each job's texts, or the exception that ended it."""
    async def one(g, j):
        texts = [""] * j.num_rows
        try:
            async for pieces in g:
                for p in pieces:
                    texts[p.index] += p.text
        except RuntimeError as e:
            return e
        return texts

    async def run():
        with engine._cond:  # hold the engine thread so every job is admitted in the same step
            gens = [engine.submit(j) for j in jobs]
        return await asyncio.gather(*(one(g, j) for g, j in zip(gens, jobs)))

    return asyncio.run(run())


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from gpt2kit import load_model

    torch.set_num_threads(1)
    return load_model(random_checkpoint(tmp_path_factory.mktemp("iso") / "local"))


def _jobs(**poison_kw):
    from gpt2kit.serve.rows import Job

    good = [Job([TOK.encode(p)], max_tokens=m, params=SamplingParams(temperature=0)) for p, m in [("Alpha", 20), ("Beta gamma", 30)]]
    bad = Job([TOK.encode("Poison")], max_tokens=25, params=SamplingParams(temperature=0.7, top_k=7), **poison_kw)
    return [good[0], bad, good[1]]


def test_engine_failure_at_admission_fails_that_request_only(local):
    from gpt2kit.serve.engine import Engine, RequestFailed

    engine = Engine(local, TOK, max_batch=8)
    try:
        ref = _collect(engine, [j for i, j in enumerate(_jobs()) if i != 1])
        got = _collect(engine, _jobs(stop=[""]))  # unvalidated bad input: the row's TextStreamer refuses it
    finally:
        engine.close()
    assert isinstance(got[1], RequestFailed) and got[1].client_error and "stop strings" in str(got[1])
    assert [got[0], got[2]] == ref


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_engine_sampling_fault_fails_that_request_only(local, monkeypatch, fault):
    from gpt2kit.sampling import NO_FINITE_LOGIT
    from gpt2kit.sampling_params import NAN_LOGITS_MESSAGE
    from gpt2kit.inference import engine as core_mod
    from gpt2kit.serve import engine as engine_mod

    real = core_mod.sample_rows

    def faulty(logits, rows):  # the poison request's rows (top_k=7) fail as a NaN model or a bug would
        if rows[0].params.top_k == 7:
            if fault == "raise":
                raise ValueError("boom")
            return [NO_FINITE_LOGIT] * len(rows)
        return real(logits, rows)

    engine = engine_mod.Engine(local, TOK, max_batch=8)
    try:
        ref = _collect(engine, [j for i, j in enumerate(_jobs()) if i != 1])
        monkeypatch.setattr(core_mod, "sample_rows", faulty)
        got = _collect(engine, _jobs())
        stats = engine.stats()
    finally:
        engine.close()
    assert isinstance(got[1], engine_mod.RequestFailed) and not got[1].client_error
    assert str(got[1]) == (NAN_LOGITS_MESSAGE if fault == "nan" else "generation failed: ValueError: boom")
    assert [got[0], got[2]] == ref and stats["rows"] == 0 and stats["running"] == 0


def test_nan_model_gets_a_500_with_an_openai_error(tmp_path):
    from gpt2kit import load_model, save_model

    d = random_checkpoint(tmp_path / "nan")
    model = load_model(d)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_model(model, d, tokenizer=TOK)
    s = Server("--model", str(d), "--no-page", "--threads", "1")
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "no finite logits" in r.json()["error"]["message"]
        with httpx.stream("POST", s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True}, timeout=60) as st:
            events = [json.loads(x[6:]) for x in st.iter_lines() if x.startswith("data: ")]
        assert events[-1]["error"]["type"] == "server_error"
        assert s.health()["status"] == "ok"
    finally:
        s.close()


def test_long_stop_strings_are_capped_and_a_full_set_leaves_other_streams_unchanged(server):
    from gpt2kit.streaming import MAX_STOP_CHARS, MAX_STOP_STRINGS

    issue = {"prompt": "x", "max_tokens": 4, "stop": ["é" * 250_000] * 4}  # the issue's repro: 3.2 s per token before
    full = {"prompt": "x", "max_tokens": 30, "stop": ["é" * (MAX_STOP_CHARS - 1) + chr(97 + i) for i in range(MAX_STOP_STRINGS)]}
    alone, _ = asyncio.run(_run(server.url, []))
    beside, (capped, served) = asyncio.run(_run(server.url, [issue, full]))
    assert beside == alone
    assert capped.status_code == 400 and capped.json()["error"]["param"] == "stop"
    assert f"at most {MAX_STOP_CHARS}" in capped.json()["error"]["message"]
    assert served.status_code == 200, served.text
    assert served.json()["usage"]["completion_tokens"] == 30
