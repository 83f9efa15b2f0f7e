"""The demo page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

The server runs a scripted checkpoint (see serve_helpers.scripted_model): for the example prompt
its continuation is known, and contains HTML tags, which must appear as text, never as markup.
A screenshot is kept in tests/artifacts/serve_page.png.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api")

from serve_helpers import Server, scripted_model  # noqa: E402

from gpt2kit import save_model  # noqa: E402
from gpt2kit.tokenization import get_tokenizer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOK = get_tokenizer("gpt2")
PROMPT = "The Moon's orbit around Earth has"
KEY = "page-test-key"
CONTINUATION = " a period of 27.3 days, said <b>nobody</b> <img src=x onerror=alert(1)> ever."

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM}: apt-get install -y chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the prompt's last position predicts the first continuation token (filler before it is never used)
    n = len(TOK.encode(PROMPT))
    cont = TOK.encode(CONTINUATION)
    script = [cont[0]] * (n - 1) + cont + [TOK.eot_token]
    d = tmp_path_factory.mktemp("page") / "scripted"
    save_model(scripted_model(script), d, tokenizer=TOK)
    s = Server("--model", str(d), "--api-key", KEY, "--threads", "1")
    yield s
    s.close()


def test_page_needs_the_key_through_a_sign_in(server):
    r = httpx.get(server.url + "/", headers={"accept": "text/html"}, timeout=60)
    assert (r.status_code, r.headers["location"]) == (303, "/login")  # a browser is sent to the sign-in form
    assert httpx.get(server.url + "/", timeout=60).status_code == 401
    assert httpx.get(server.url + "/health", timeout=60).status_code == 200
    assert httpx.get(server.url + "/v1/models", timeout=60).status_code == 401
    assert httpx.post(server.url + "/login", data={"key": "wrong"}, timeout=60).status_code == 401
    r = httpx.post(server.url + "/login", data={"key": KEY}, timeout=60)
    assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"] and KEY not in r.headers["set-cookie"]
    page = httpx.get(server.url + "/", cookies=r.cookies, timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_page_generates_streamed_plain_text(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server.url + "/", wait_until="domcontentloaded")  # redirected to the sign-in form
            page.locator("input[name=key]").fill(KEY)
            page.locator("button[type=submit]").click()
            prompt = page.locator("#prompt textarea")
            prompt.wait_for(timeout=60_000)
            page.get_by_text(PROMPT).first.wait_for(timeout=30_000)  # the examples list the seed demo's prompt (they render after the textbox)
            prompt.press_sequentially(PROMPT)
            page.locator("#generate").click()
            output = page.locator("#output textarea")
            page.wait_for_function("e => e.value.endsWith(' ever.')", arg=output.element_handle(), timeout=60_000)
            assert output.input_value() == PROMPT + CONTINUATION
            # tags in model output stay text: nothing was parsed into elements anywhere on the page
            assert page.locator("#output b, #output img").count() == 0
            assert page.locator("img[src='x']").count() == 0
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "serve_page.png").stat().st_size > 10_000


def test_page_streams_piece_by_piece(server):
    """gradio's own client sees every update the page's handler yields."""
    gradio_client = pytest.importorskip("gradio_client")
    c = gradio_client.Client(server.url + "/", verbose=False, headers={"Authorization": f"Bearer {KEY}"})
    job = c.submit(PROMPT, 1.0, 40, 1.0, 64, api_name="/complete")
    final = job.result(timeout=60)
    seen = job.outputs()
    steps = [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]]  # the final result is repeated once
    cont = TOK.encode(CONTINUATION)
    assert final == PROMPT + CONTINUATION
    # one update per generated token: the prompt, then the prompt plus each longer prefix
    assert steps == [PROMPT + TOK.decode(cont[:i]) for i in range(len(cont) + 1)]
