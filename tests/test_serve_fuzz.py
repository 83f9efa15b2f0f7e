"""Property-based fuzzing of the server (issue 16): schemathesis against its own OpenAPI schema, and
hypothesis-generated /v1/completions bodies. No 5xx, no hung request, the server healthy afterwards.

The default suite runs a bounded number of cases; the `slow` tests run many more.
"""
from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from serve_helpers import Server, random_checkpoint  # noqa: E402

REQUEST_TIMEOUT = 60  # seconds: a request that takes longer counts as hung (tiny model, context 64)
QUICK = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = random_checkpoint(tmp_path_factory.mktemp("fuzz") / "tiny", block_size=64)
    s = Server("--model", str(ckpt), "--no-page", "--threads", "1", "--max-tokens-cap", "32")
    yield s
    assert s.health()["status"] == "ok" and s.health()["active"] == 0  # healthy after everything
    s.close()


@pytest.fixture
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@QUICK
def test_openapi_schema_fuzz(case):
    case.call_and_validate(checks=[not_a_server_error], timeout=REQUEST_TIMEOUT)


@pytest.mark.slow
@schema.parametrize()
@LONG
def test_openapi_schema_fuzz_long(case):
    case.call_and_validate(checks=[not_a_server_error], timeout=REQUEST_TIMEOUT)


# -- hypothesis bodies: near-valid fields mixed with arbitrary JSON ------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "prompt": st.text(max_size=40) | st.lists(st.integers(-5, 60000), max_size=8) | st.lists(st.text(max_size=8), max_size=3),
    "max_tokens": st.integers(-2, 40),
    "temperature": st.floats(-1, 3) | st.sampled_from([0, 1e-300, 1e-5, 2]),
    "top_p": st.floats(-0.5, 1.5) | st.sampled_from([1e-300, 1]),
    "top_k": st.integers(-3, 60000),
    "repetition_penalty": st.floats(-1, 5) | st.sampled_from([1e-300, 1e300]),
    "n": st.integers(-1, 70),
    "seed": st.integers(-2**65, 2**65),
    "logprobs": st.integers(-1, 7),
    "echo": st.booleans(),
    "stream": st.booleans(),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=18),
    "model": st.sampled_from(["tiny", "gpt-4"]),
}
bodies = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in FIELDS.items()}) | json_values


def _post(server, body) -> httpx.Response:
    raw = json.dumps(body, allow_nan=True).encode()
    return httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"},
                      timeout=REQUEST_TIMEOUT)


def _check(server, body) -> None:
    r = _post(server, body)
    assert r.status_code in (200, 400, 404), (body, r.status_code, r.text[:300])
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif isinstance(body, dict) and body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    else:
        assert all(isinstance(c["text"], str) for c in r.json()["choices"])


@given(body=bodies)
@settings(QUICK, max_examples=60)
def test_completions_bodies_fuzz(server, body):
    _check(server, body)


@pytest.mark.slow
@given(body=bodies)
@LONG
def test_completions_bodies_fuzz_long(server, body):
    _check(server, body)


def test_non_finite_numbers_in_raw_json_are_400(server):
    for v in ("NaN", "Infinity", "-Infinity", "1e999"):
        r = httpx.post(server.url + "/v1/completions", content=f'{{"prompt": "x", "temperature": {v}}}'.encode(),
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", v
    assert math.isinf(float("1e999"))
