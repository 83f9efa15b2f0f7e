"""The gate in front of every route (issue 16 item 3): the key guards the page and gradio's routes too,
uploads are refused, and cross-origin requests are refused unless --cors-origin allows them."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server, random_checkpoint  # noqa: E402

KEY = "sekret"
ALLOWED = "http://ok.example"
EVIL = "http://evil.example"
AUTH = {"Authorization": f"Bearer {KEY}"}
GUARDED = [("GET", "/"), ("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", "/openapi.json"), ("GET", "/docs"),
           ("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/tokenize"),
           ("POST", "/detokenize"), ("POST", "/gradio_api/call/complete"),
           ("POST", "/gradio_api/queue/join"), ("GET", "/gradio_api/file=/etc/hostname"), ("GET", "/theme.css")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("guard") / "tiny", block_size=64)


@pytest.fixture(scope="module")
def keyed(ckpt):
    s = Server("--model", str(ckpt), "--api-key", KEY, "--threads", "1", "--cors-origin", ALLOWED)
    yield s
    s.close()


@pytest.fixture(scope="module")
def open_server(ckpt):
    s = Server("--model", str(ckpt), "--threads", "1")
    yield s
    s.close()


@pytest.mark.parametrize("method,path", GUARDED)
def test_every_route_but_health_needs_the_key(keyed, method, path):
    r = httpx.request(method, keyed.url + path, json={"data": ["x", 1.0, 40, 1.0, 4]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text[:200])
    assert httpx.get(keyed.url + "/health", timeout=60).status_code == 200


def test_the_key_opens_the_api_and_the_schema(keyed):
    assert httpx.get(keyed.url + "/config", headers=AUTH, timeout=60).status_code == 200
    schema = httpx.get(keyed.url + "/openapi.json", headers=AUTH, timeout=60).json()
    assert "/v1/completions" in schema["paths"]
    r = httpx.post(keyed.url + "/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("path", ["/gradio_api/upload", "/gradio_api/upload_progress", "/upload"])
def test_uploads_are_refused_even_with_the_key(keyed, open_server, path):
    for s, headers in ((keyed, AUTH), (open_server, {})):
        r = httpx.post(s.url + path, headers=headers, files={"files": ("a.txt", b"x" * 1000)}, timeout=60)
        assert r.status_code == 403 and r.json()["error"]["code"] == "uploads_disabled"


@pytest.mark.parametrize("fixture", ["keyed", "open_server"])
def test_cross_origin_requests_are_refused_by_default(request, fixture):
    s = request.getfixturevalue(fixture)
    simple = {"Origin": EVIL, "Content-Type": "text/plain", **AUTH}  # a form-like POST needs no preflight
    r = httpx.post(s.url + "/v1/completions", headers=simple, content=b'{"prompt": "x", "max_tokens": 1}', timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cors_forbidden"
    assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(s.url + "/v1/completions", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
    assert httpx.post(s.url + "/gradio_api/call/complete", headers={"Origin": EVIL, **AUTH},
                      json={"data": ["x", 1.0, 40, 1.0, 4]}, timeout=60).status_code == 403
    same = httpx.post(s.url + "/v1/completions", headers={"Origin": s.url, **AUTH}, json={"prompt": "x", "max_tokens": 1}, timeout=60)
    assert same.status_code == 200  # the page's own requests are same-origin


def test_cors_origin_flag_allows_that_origin_only(keyed):
    pre = httpx.options(keyed.url + "/v1/completions", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                                                                "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == ALLOWED
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    r = httpx.post(keyed.url + "/v1/completions", headers={"Origin": ALLOWED, **AUTH}, json={"prompt": "x", "max_tokens": 1}, timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    assert httpx.post(keyed.url + "/v1/completions", headers={"Origin": ALLOWED}, json={"prompt": "x"}, timeout=60).status_code == 401
