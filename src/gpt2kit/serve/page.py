"""The demo page: a gradio Blocks text-continuation form, mounted on the API app at `/`.

It drives the same engine and the same request validation as /v1/completions. Output goes to
a Textbox, so model text is always shown as plain text, never parsed as HTML or Markdown.
"""
from __future__ import annotations

import asyncio
import os

from .engine import Busy, Cancelled, Engine
from .protocol import ApiError, ServerLimits, parse_completion

EXAMPLES = [
    "The Moon's orbit around Earth has",
    "In a shocking finding, scientist discovered a herd of unicorns living in a remote, previously unexplored valley,",
    "Once upon a time, in a small village by the sea,",
    "The key to writing good software is",
]


def fit_to_context(body: dict, limits: ServerLimits) -> dict:
    """The slider's max_tokens, lowered to what the context leaves after the prompt (the API would refuse more)."""
    try:
        n = len(limits.tokenizer.encode(body["prompt"], allowed_special="all"))
    except Exception:  # parse_completion reports a bad prompt with its own message
        return body
    return {**body, "max_tokens": max(1, min(body["max_tokens"], limits.block_size - n))}


def build_page(engine: Engine, limits: ServerLimits):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page works offline
    import gradio as gr

    async def complete(prompt: str, temperature: float, top_k: float, top_p: float, max_tokens: float):
        body = {"prompt": prompt, "temperature": float(temperature), "top_k": int(top_k) or None,
                "top_p": float(top_p), "max_tokens": int(max_tokens)}
        try:
            req = await asyncio.to_thread(lambda: parse_completion(fit_to_context(body, limits), limits))
            gen = engine.submit(req.job)
        except ApiError as e:
            raise gr.Error(e.message) from None
        except Busy as e:
            raise gr.Error(str(e)) from None
        text = prompt
        yield text
        try:
            async for pieces in gen:
                text += "".join(p.text for p in pieces)
                yield text
        except Cancelled:
            return
        except RuntimeError as e:  # this request failed in the engine (the others go on)
            raise gr.Error(str(e)) from None
        finally:
            gen.cancel()  # the browser left or pressed stop: free the row

    with gr.Blocks(title="gpt2kit", analytics_enabled=False) as page:
        gr.Markdown(f"# gpt2kit\nContinue a prompt with **{limits.model_id}**. The same server answers "
                    "OpenAI-style requests at `/v1/completions`.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, placeholder="Type the start of a text…", elem_id="prompt")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature (0 = greedy)")
                top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k (0 = off)")
                top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="Top-p")
                max_tokens = gr.Slider(1, limits.max_tokens_cap, value=min(100, limits.max_tokens_cap), step=1, label="Max tokens")
        output = gr.Textbox(label="Output", lines=12, interactive=False, elem_id="output", buttons=["copy"])
        gr.Examples([[e] for e in EXAMPLES], inputs=[prompt])
        button.click(complete, [prompt, temperature, top_k, top_p, max_tokens], output,
                     concurrency_limit=engine.max_concurrency, api_name="complete")
    return page


def mount_page(app, engine: Engine, limits: ServerLimits):
    import gradio as gr

    font = [gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")]  # no web fonts: nothing to fetch
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")]
    theme = gr.themes.Default(font=font, font_mono=mono)
    return gr.mount_gradio_app(app, build_page(engine, limits), path="/", theme=theme, footer_links=[])
