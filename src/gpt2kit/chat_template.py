"""Chat templates: messages -> the prompt text a model continues, torch-free (jinja2, sandboxed).

A template is Jinja source in Hugging Face's convention (variables `messages`,
`add_generation_prompt`, `eos_token`, `bos_token`; `raise_exception(msg)`), rendered in an
ImmutableSandboxedEnvironment as transformers does. It is stored with the tokenizer's files as
chat_template.jinja (Tokenizer.save writes it, load_tokenizer reads it; an HF export puts it in
tokenizer_config.json's "chat_template"). Two conventions on top of HF's:

- `{% generation %}...{% endgeneration %}` marks what the assistant says (HF's tag for assistant
  masks): render_with_spans returns those character spans, assistant_token_mask the tokens in them,
  so finetuning can put the loss on assistant tokens only.
- A top-level `{%- set stop_strings = [...] -%}` names the strings that end an assistant turn; the
  server adds them to a chat request's stop list (the tokenizer's end-of-text token always stops).

Models without a stored template (base GPT-2) use DEFAULT_TEMPLATE, plain role-labelled turns:

    System: You are terse.

    User: Hi

    Assistant: Hello.

    User: Bye

    Assistant:

Turns are separated by a blank line; the generation prompt is "Assistant:" (the reply begins with a
space, as GPT-2's words do; the server drops a reply's leading whitespace). A reply ends where the
model starts a new turn ("\\n\\nUser:", "\\n\\nSystem:" or "\\n\\nAssistant:") or emits <|endoftext|>;
a conversation rendered for training (no generation prompt) ends its last assistant turn with the
end-of-text token, so a finetuned model learns to stop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import GPT2KitError

TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant")
DEFAULT_STOP = ("\n\nUser:", "\n\nSystem:", "\n\nAssistant:")
DEFAULT_TEMPLATE = """\
{%- set stop_strings = ["\\n\\nUser:", "\\n\\nSystem:", "\\n\\nAssistant:"] -%}
{%- for m in messages -%}
{%- set sep = "\\n\\n" if not loop.last or add_generation_prompt else "" -%}
{%- if m.role == "assistant" -%}
Assistant:{% generation %} {{ m.content }}{{ sep if sep else (eos_token or "") }}{% endgeneration %}
{%- else -%}
{{ "System" if m.role == "system" else "User" }}: {{ m.content }}{{ sep }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}Assistant:{% endif -%}
"""
# What {% generation %} wraps its output in while rendering (private-use characters: message text may not hold them).
_OPEN, _CLOSE = "\ue000", "\ue001"


class ChatTemplateError(GPT2KitError):
    """Bad messages or a template that cannot render them."""


def check_messages(messages) -> list[dict]:
    """OpenAI-style messages -> [{"role", "content": str}]; content parts of type text are joined."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    return [_check_message(i, m) for i, m in enumerate(messages)]


def _check_message(i: int, m) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise ChatTemplateError(f"{where} must be an object with 'role' and 'content', got {type(m).__name__}")
    role = m.get("role")
    if role == "developer":  # OpenAI's newer name for the system role
        role = "system"
    if role not in ROLES:
        raise ChatTemplateError(f"{where}.role is {role!r:.40}; use one of {', '.join(ROLES)}")
    content = _content_text(where, m.get("content"), role)
    if _OPEN in content or _CLOSE in content:
        raise ChatTemplateError(f"{where}.content holds the private-use characters U+E000/U+E001; remove them")
    return {"role": role, "content": content}


def _content_text(where: str, content, role: str) -> str:
    if content is None and role == "assistant":
        return ""  # an assistant turn that only called tools: nothing to show a GPT-2
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatTemplateError(f"{where}.content must be a string or a list of {{'type': 'text', 'text': ...}} parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ChatTemplateError(f"{where}.content[{j}] is of type {kind!r:.40}; this model reads text only: "
                                    "send {'type': 'text', 'text': ...} parts or a plain string")
        texts.append(part["text"])
    return "".join(texts)


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateError, nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """{% generation %}body{% endgeneration %}: the body, wrapped in markers render_with_spans turns into spans."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _OPEN + caller() + _CLOSE

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}; fix {TEMPLATE_FILE}") from None


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template with its stop strings. eos_token/bos_token: the text the template may write."""

    source: str = DEFAULT_TEMPLATE
    eos_token: str | None = "<|endoftext|>"
    bos_token: str | None = "<|endoftext|>"
    stop: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        template = _compile(self.source)
        try:
            stop = getattr(template.make_module({"messages": [], "add_generation_prompt": False}), "stop_strings", ())
        except Exception:  # a template that insists on messages: it declares no stop strings
            stop = ()
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise ChatTemplateError(f"the chat template's stop_strings must be a list of non-empty strings, got {stop!r:.80}")
        object.__setattr__(self, "stop", tuple(stop))

    @property
    def is_default(self) -> bool:
        return self.source == DEFAULT_TEMPLATE

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """The prompt text for messages (checked with check_messages); with the generation prompt by default."""
        return self.render_with_spans(messages, add_generation_prompt)[0]

    def render_with_spans(self, messages, add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """(text, [(start, end)]): the rendered conversation and the character spans of what the assistant says
        (the {% generation %} blocks: each reply and the text that ends it). Training renders without the
        generation prompt (the default here)."""
        from jinja2 import TemplateError

        msgs = check_messages(messages)
        try:
            raw = _compile(self.source).render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                               eos_token=self.eos_token, bos_token=self.bos_token)
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {type(e).__name__}: {e}") from None
        return _unmark(raw)


def _unmark(raw: str) -> tuple[str, list[tuple[int, int]]]:
    """Strip the generation markers; each marked stretch becomes a span (empty ones are dropped)."""
    out, spans, start, n = [], [], None, 0
    for c in raw:
        if c == _OPEN:
            start = n
        elif c == _CLOSE:
            if start is not None and n > start:
                spans.append((start, n))
            start = None
        else:
            out.append(c)
            n += 1
    return "".join(out), spans


def assistant_token_mask(template: ChatTemplate, tokenizer, messages) -> tuple[list[int], list[bool]]:
    """(ids, mask): the conversation rendered without a generation prompt and encoded (the template's special
    tokens as specials), and for each token whether it overlaps an assistant span (the tokens to train on)."""
    text, spans = template.render_with_spans(messages, add_generation_prompt=False)
    ids = tokenizer.encode(text, allowed_special="all")
    byte_spans = [(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in spans]
    mask, pos = [], 0
    for t in ids:
        end = pos + len(tokenizer.token_bytes(t))
        mask.append(any(a < end and pos < b for a, b in byte_spans))
        pos = end
    return ids, mask


def template_for(tokenizer) -> ChatTemplate:
    """The tokenizer's stored template (tokenizer.chat_template), else DEFAULT_TEMPLATE; eos/bos: its end-of-text text."""
    eot = getattr(tokenizer, "eot_token", None)
    eos = None if eot is None else tokenizer.token_bytes(eot).decode("utf-8", "replace")
    return ChatTemplate(getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE, eos_token=eos, bos_token=eos)


def load_chat_template(path: str | os.PathLike) -> ChatTemplate:
    """The chat template of a tokenizer directory, a checkpoint (its tokenizer/) or an HF folder; the default if none."""
    from .tokenization import load_tokenizer

    return template_for(load_tokenizer(path))


def read_template(directory: str | os.PathLike) -> str | None:
    """The template stored in a tokenizer directory (chat_template.jinja), or in an HF folder's
    tokenizer_config.json "chat_template"; None when there is none."""
    directory = os.fspath(directory)
    path = os.path.join(directory, TEMPLATE_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"cannot read {path}: {e}; restore it or delete it to use the default template") from None
    hf = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(hf):
        from .fileio import read_json

        source = read_json(hf, "tokenizer config")
        source = source.get("chat_template") if isinstance(source, dict) else None
        return source if isinstance(source, str) else None
    return None


def write_template(directory: str | os.PathLike, source: str) -> None:
    """Store a template beside a tokenizer's files (compiled first: a broken one is refused, not written)."""
    from .fileio import atomic_path

    ChatTemplate(source)
    with atomic_path(os.path.join(os.fspath(directory), TEMPLATE_FILE)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(source)
