"""The gate in front of every route (the API, the docs and the gradio page): key, CORS and uploads.

- With an API key, every path but /health and /login needs it: `Authorization: Bearer KEY`, or the
  session cookie that /login sets once a browser user types the key (the page's own requests then
  carry it). Browsers asking for a page are sent to /login; everything else gets an OpenAI 401.
- Cross-origin requests are refused (403) unless their Origin is one of `cors_origins`; same-origin
  requests (the page itself) pass. A browser's simple cross-site POST (text/plain) carries an Origin,
  so a web page the user visits cannot drive the server.
- Uploads are refused: the page takes text only, and gradio would store any file sent to it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from urllib.parse import parse_qs, urlsplit

PUBLIC = ("/health", "/login")
COOKIE = "gpt2kit_session"
UPLOAD = re.compile(r"(^|/)(upload|upload_progress)/?$")
LOGIN_FORM_LIMIT = 4096


def session_token(api_key: str) -> str:
    """The cookie value: derived from the key, so it changes with it and never reveals it."""
    return hmac.new(api_key.encode(), b"gpt2kit page session", hashlib.sha256).hexdigest()


class Guard:
    """Pure ASGI middleware (it sees streaming responses and gradio's routes unchanged)."""

    def __init__(self, app, api_key: str | None = None, cors_origins: tuple[str, ...] = ()):
        self.app = app
        self.api_key = api_key
        self.token = session_token(api_key) if api_key else None
        self.cors_origins = {o.rstrip("/") for o in cors_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = scope.get("path", "/"), scope.get("method", "GET")
        origin = headers.get("origin")
        allowed = origin is not None and origin.rstrip("/") in self.cors_origins
        if origin is not None and not allowed and not _same_origin(origin, headers.get("host", "")):
            return await _deny(scope, send, 403, "cross-origin requests are refused; start the server with "
                               "--cors-origin ORIGIN to allow a web app", "cors_forbidden")
        if allowed and method == "OPTIONS" and "access-control-request-method" in headers:
            return await _respond(send, 204, b"", "text/plain", _cors_headers(origin))
        if UPLOAD.search(path):
            return await _deny(scope, send, 403, "uploads are disabled: the page takes text only", "uploads_disabled")
        if self.api_key and path not in PUBLIC and not self._authorized(headers):
            if method == "GET" and "text/html" in headers.get("accept", ""):
                return await _respond(send, 303, b"", "text/plain", [(b"location", b"/login")])
            return await _deny(scope, send, 401, "missing or incorrect API key; send it as `Authorization: Bearer KEY`",
                               "invalid_api_key")
        if path == "/login":
            return await self._login(scope, receive, send)
        if allowed:
            send = _with_headers(send, _cors_headers(origin))
        return await self.app(scope, receive, send)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.token.encode())

    async def _login(self, scope, receive, send):
        """GET: a one-field form; POST key=...: the session cookie and a redirect to the page."""
        if scope["type"] != "http" or self.api_key is None:
            return await self.app(scope, receive, send)
        error = ""
        if scope["method"] == "POST":
            body = await _read(receive, LOGIN_FORM_LIMIT)
            given = parse_qs((body or b"").decode("utf-8", "replace")).get("key", [""])[0]
            if body is not None and hmac.compare_digest(given.encode(), self.api_key.encode()):
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                return await _respond(send, 303, b"", "text/plain", [(b"location", b"/"), (b"set-cookie", cookie.encode())])
            error = "<p role='alert'>That key is not correct.</p>"
        page = (f"<!doctype html><html><head><title>gpt2kit: sign in</title></head><body><h1>gpt2kit</h1>{error}"
                "<form method='post' action='/login'><label>API key <input type='password' name='key' autofocus></label>"
                "<button type='submit'>Open the page</button></form></body></html>")
        return await _respond(send, 401 if error else 200, page.encode(), "text/html; charset=utf-8")


def _same_origin(origin: str, host: str) -> bool:
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def _cookies(header: str) -> dict:
    out = {}
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        out.setdefault(k, v)
    return out


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", b"Authorization, Content-Type")]


def _with_headers(send, extra: list[tuple[bytes, bytes]]):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


async def _read(receive, limit: int) -> bytes | None:
    """The request body, or None once it passes limit bytes."""
    buf = bytearray()
    while True:
        message = await receive()
        buf += message.get("body", b"")
        if len(buf) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(buf)


async def _respond(send, status: int, body: bytes, content_type: str, headers: list | None = None):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _deny(scope, send, status: int, message: str, code: str):
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return await _respond(send, status, json.dumps(body).encode(), "application/json")
