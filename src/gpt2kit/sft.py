"""Chat SFT data: a JSONL file of {"messages": [...]} conversations -> packed rows with the loss on the
assistant's tokens only.

Each conversation is rendered with the model's chat template (chat_template.template_for: the same
text the server's /v1/chat/completions builds) and encoded; assistant_token_mask marks the tokens the
assistant says (its reply and the end-of-text or separator that ends it). A row of block_size + 1
tokens starts at a conversation's start and is filled with whole conversations drawn at random (the
last one cut at the row's end); targets outside the assistant's tokens are -1, which the model's loss
ignores.

A model without a stored template is trained with SFT_TEMPLATE, which is saved with its tokenizer (so
`gpt2kit chat` and the server render what it was trained on): the default's plain "User:/Assistant:"
turns, but every reply ends with the end-of-text token. With the default template only the last reply
does, and a model cannot know whether the user will ask again: it learns to write the blank line that
may start a new turn about as often as to stop, and the "User:" that would complete the stop string is
never a target. Rows are drawn by the counter-based RNG of data.TokenData, so resume stays exact. The last
tenth of the conversations (at least one) is the val split.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .chat_template import ChatTemplateError, assistant_token_mask, template_for
from .errors import GPT2KitError

IGNORE = -1  # the model's cross-entropy ignore_index
SFT_TEMPLATE = """\
{%- set stop_strings = ["\\n\\nUser:", "\\n\\nSystem:", "\\n\\nAssistant:"] -%}
{%- for m in messages -%}
{%- set sep = "\\n\\n" if not loop.last or add_generation_prompt else "" -%}
{%- if m.role == "assistant" -%}
Assistant:{% generation %} {{ m.content }}{{ eos_token or "" }}{% endgeneration %}{{ sep }}
{%- else -%}
{{ "System" if m.role == "system" else "User" }}: {{ m.content }}{{ sep }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}Assistant:{% endif -%}
"""


@dataclass
class Conversation:
    line: int  # 1-based line number in the JSONL file
    ids: np.ndarray  # int64 token ids of the rendered conversation
    mask: np.ndarray  # bool, True where the token is the assistant's


def read_messages(path: str) -> list[tuple[int, list]]:
    """(line number, messages) for each non-blank line of a JSONL file of {"messages": [...]} objects."""
    if os.path.isdir(path):
        raise GPT2KitError(f"{path} is a directory; SFT data is one JSONL file of {{\"messages\": [...]}} lines")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise GPT2KitError(f"SFT data not found: {path}; pass data=FILE.jsonl (e.g. from `gpt2kit demo chat-data`)") from None
    except UnicodeDecodeError as e:
        raise GPT2KitError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it first") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise GPT2KitError(f"{path}:{n} is not JSON; each line must be one {{\"messages\": [...]}} object (JSONL)") from None
        if not isinstance(obj, dict) or "messages" not in obj:
            raise GPT2KitError(f"{path}:{n} has no \"messages\" field; each line must be {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
        out.append((n, obj["messages"]))
    if len(out) < 2:
        raise GPT2KitError(f"{path} holds {len(out)} conversation(s); SFT needs at least 2 (one for val)")
    return out


def encode_conversations(path: str, tokenizer) -> list[Conversation]:
    """Every conversation of path rendered with tokenizer's chat template and encoded, with its assistant mask."""
    template = template_for(tokenizer)
    convs = []
    for n, messages in read_messages(path):
        try:
            ids, mask = assistant_token_mask(template, tokenizer, messages)
        except ChatTemplateError as e:
            raise GPT2KitError(f"{path}:{n}: {e}") from None
        except GPT2KitError as e:  # e.g. text the tokenizer cannot encode
            raise GPT2KitError(f"{path}:{n}: {e}") from None
        if not any(mask):
            raise GPT2KitError(f"{path}:{n} has no assistant turn to train on; add a {{\"role\": \"assistant\", ...}} message or drop the line")
        convs.append(Conversation(n, np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)))
    return convs


def conversation_texts(path: str, template) -> list[str]:
    """The rendered conversations (for building a corpus vocabulary before the tokenizer exists)."""
    texts = []
    for n, messages in read_messages(path):
        try:
            texts.append(template.render_with_spans(messages, add_generation_prompt=False)[0])
        except ChatTemplateError as e:
            raise GPT2KitError(f"{path}:{n}: {e}") from None
    return texts


def sft_tokenizer(path: str, spec: str, init_from: str):
    """The tokenizer to train with: the init model's own, or (from scratch) `spec` built over the rendered
    conversations (corpus-built kinds get an end-of-text token, which ends each reply); its chat template
    is the stored one, else SFT_TEMPLATE (saved with it)."""
    from .chat_template import ChatTemplate
    from .tokenization import build_tokenizer, get_tokenizer

    if init_from != "scratch":
        tok = get_tokenizer(init_from)
    else:
        tok = build_tokenizer(spec, conversation_texts(path, ChatTemplate(SFT_TEMPLATE, eos_token="", bos_token="")), eot=True)
    if tok.eot_token is None:
        raise GPT2KitError(f"the tokenizer {spec if init_from == 'scratch' else init_from!r} has no end-of-text token to end "
                           "a reply with; use one that has (gpt2, or a corpus-built char/word vocabulary)")
    tok.chat_template = tok.chat_template or SFT_TEMPLATE
    return tok


class SFTData:
    """Conversations as packed, masked rows; the same interface as data.TokenData (batch, tokenizer, n_vocab)."""

    def __init__(self, path: str, tokenizer):
        self.dir = path
        self._tokenizer = tokenizer
        self.n_vocab = tokenizer.n_vocab
        convs = encode_conversations(path, tokenizer)
        n_val = max(1, len(convs) // 10)
        self.splits = {"train": convs[:-n_val], "val": convs[-n_val:]}

    def tokenizer(self):
        return self._tokenizer

    def check_block_size(self, block_size: int) -> None:
        for convs in self.splits.values():
            for c in convs:
                if len(c.ids) > block_size + 1:
                    raise GPT2KitError(f"{self.dir}:{c.line} is {len(c.ids)} tokens, longer than block_size + 1 = {block_size + 1}; "
                                       "shorten or split that conversation, or train with a larger block_size=")

    def batch(self, split: str, batch_size: int, block_size: int, key: tuple[int, ...]):
        """(x, y) int64 arrays (B, T): each row whole conversations from its start, y = -1 off the assistant's tokens."""
        convs = self.splits[split]
        rng = np.random.Generator(np.random.PCG64(list(key)))
        x = np.empty((batch_size, block_size), dtype=np.int64)
        y = np.empty((batch_size, block_size), dtype=np.int64)
        for b in range(batch_size):
            ids, mask = _pack(convs, rng, block_size + 1)
            x[b] = ids[:-1]
            y[b] = np.where(mask[1:], ids[1:], IGNORE)
        return x, y


def _pack(convs: list[Conversation], rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, size = [], [], 0
    while size < n:
        c = convs[int(rng.integers(len(convs)))]
        ids.append(c.ids)
        mask.append(c.mask)
        size += len(c.ids)
    return np.concatenate(ids)[:n], np.concatenate(mask)[:n]
