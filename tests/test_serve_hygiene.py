"""Server hygiene (issue 16 items 7 and 11): nested JSON, slowloris connections, OpenAI-shaped 404/405."""
from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server, random_checkpoint  # noqa: E402

MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = random_checkpoint(tmp_path_factory.mktemp("hyg") / "tiny", block_size=64)
    s = Server("--model", str(ckpt), "--no-page", "--threads", "1", "--read-timeout", "1",
               "--max-connections", str(MAX_CONNECTIONS))
    yield s
    s.close()


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes the connection (recv gives EOF or a reset) before our 20 s socket timeout."""
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("body", [b'{"prompt":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"prompt": "x", "n": ' + b"{" * 50 + b"}" * 50 + b"}"], ids=["lists-100000", "objects-50"])
def test_deeply_nested_json_is_400(server, body):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and "nests arrays or objects over 32 deep" in r.json()["error"]["message"]
    # brackets inside strings do not count
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "[" * 40 + '"\\', "max_tokens": 1}, timeout=60)
    assert r.status_code == 200


def test_slow_headers_are_cut_off_and_connections_are_capped(server):
    slow = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    for s in slow:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    extra = _connect(server)  # one past the cap: closed on arrival, whatever it sends
    assert _closed_by_server(extra)
    assert all(_closed_by_server(s) for s in slow)  # each dropped once its 1 s header deadline passes
    for s in [*slow, extra]:
        s.close()
    assert _healthy_within(server, 60)  # once the server's connection_lost callbacks have run (seconds on a loaded machine)


def _healthy_within(server, seconds: float) -> bool:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return server.health()["status"] == "ok"
        except httpx.TransportError:  # still at the connection cap: closed on arrival
            time.sleep(0.1)
    return False


def test_a_slow_body_gets_408(server):
    with _connect(server) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        reply = b""
        while b'"}}' not in reply:  # the body never completes: the 1 s read timeout answers
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and '"code":"request_timeout"' in reply


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/completions", 405), ("PUT", "/v1/models", 405),
                                                ("GET", "/v1/chat/completions", 405), ("GET", "/tokenize", 405), ("GET", "/nope", 404),
                                                ("POST", "/v1/models/x/y", 405), ("DELETE", "/v1", 404)])
def test_unknown_routes_and_wrong_methods_are_openai_shaped(server, method, path, status):
    r = httpx.request(method, server.url + path)
    err = r.json()["error"]
    assert r.status_code == status and set(err) == {"message", "type", "param", "code"}
    if status == 404:
        assert "POST /v1/completions" in err["message"] and err["code"] == "unknown_url"
    else:
        assert r.headers["allow"] in ("GET", "POST") and err["code"] == "method_not_allowed"
