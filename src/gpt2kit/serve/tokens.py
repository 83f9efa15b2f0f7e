"""vLLM's POST /tokenize and POST /detokenize, so clients can count tokens without a local tokenizer.

/tokenize takes {"prompt", "add_special_tokens"} or {"messages", "add_generation_prompt"} (rendered
by the chat template, as /v1/chat/completions does) and answers {"count", "max_model_len", "tokens"}
(plus "token_strs" with return_token_strs); /detokenize takes {"tokens"} and answers {"prompt"}.
GPT-2 adds no special tokens, so add_special_tokens changes nothing.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..chat_template import ChatTemplate
from .chat import render_messages
from .protocol import Bool, Int, ServerLimits, bad, check_ids, encode_text, parse_body, token_text


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list | None = None
    add_special_tokens: Bool = True
    add_generation_prompt: Bool = True
    return_token_strs: Bool | None = False


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[Int]


def tokenize(body, lim: ServerLimits) -> dict:
    b = parse_body(body, TokenizeBody, lim)
    if (b.prompt is None) == (b.messages is None):
        raise bad("give either prompt (a string) or messages (a chat), not both or neither", "prompt")
    if b.prompt is not None:
        ids = encode_text(b.prompt, lim, "prompt")
    else:
        ids = render_messages(b.messages, lim.chat_template or ChatTemplate(), lim, b.add_generation_prompt)
    out = {"count": len(ids), "max_model_len": lim.block_size, "tokens": ids}
    if b.return_token_strs:
        out["token_strs"] = [token_text(lim.tokenizer, t) for t in ids]
    return out


def detokenize(body, lim: ServerLimits) -> dict:
    b = parse_body(body, DetokenizeBody, lim)
    check_ids(b.tokens, lim, "tokens")
    return {"prompt": lim.tokenizer.decode(b.tokens)}
