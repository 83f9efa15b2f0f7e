"""Chat templates: the plain default's exact text, assistant spans and token masks, message checks,
storage with the tokenizer (checkpoint and HF export), and agreement with transformers' renderer."""
from __future__ import annotations

import pytest

from gpt2kit.chat_template import (DEFAULT_STOP, TEMPLATE_FILE, ChatTemplate, ChatTemplateError, assistant_token_mask,
                                   check_messages, load_chat_template, template_for)
from gpt2kit.tokenization import get_tokenizer, load_tokenizer

TOK = get_tokenizer("gpt2")
CONV = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "By"}, {"type": "text", "text": "e"}]}]
CHATML = ('{%- set stop_strings = ["<|im_end|>"] -%}{% for m in messages %}<|im_start|>{{ m.role }}\n'
          '{% if m.role == "assistant" %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}'
          '{% else %}{{ m.content }}<|im_end|>{% endif %}{{ "\\n" }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')


def test_default_template_text_and_stop():
    t = ChatTemplate()
    assert t.stop == DEFAULT_STOP and t.is_default
    assert t.render(CONV) == "System: Be terse.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
    assert t.render(CONV[:2], add_generation_prompt=False) == "System: Be terse.\n\nUser: Hi"


def test_spans_cover_each_reply_and_its_end():
    text, spans = ChatTemplate().render_with_spans(CONV + [{"role": "assistant", "content": "Ciao"}])
    assert text.endswith("Assistant: Ciao<|endoftext|>")
    assert [text[a:b] for a, b in spans] == [" Hello.\n\n", " Ciao<|endoftext|>"]


def test_assistant_token_mask():
    ids, mask = assistant_token_mask(ChatTemplate(), TOK, CONV[1:3])
    assert ids == TOK.encode("User: Hi\n\nAssistant: Hello.<|endoftext|>", allowed_special="all")
    assert [TOK.decode([i]) for i, m in zip(ids, mask) if m] == [" Hello", ".", "<|endoftext|>"]


def test_custom_template_stop_and_spans():
    t = ChatTemplate(CHATML)
    assert t.stop == ("<|im_end|>",) and not t.is_default
    text, spans = t.render_with_spans(CONV[1:3])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    assert [text[a:b] for a, b in spans] == ["Hello.<|im_end|>"]


@pytest.mark.parametrize("messages,needle", [
    ([], "non-empty list"),
    ("hi", "non-empty list"),
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[1].content[0]"),
    (["x"], "messages[0] must be an object"),
])
def test_bad_messages_name_the_field(messages, needle):
    with pytest.raises(ChatTemplateError) as e:
        ChatTemplate().render(messages)
    assert needle in str(e.value)


def test_check_messages_normalizes():
    assert check_messages([{"role": "developer", "content": "s"}, {"role": "assistant", "content": None}]) == [
        {"role": "system", "content": "s"}, {"role": "assistant", "content": ""}]


def test_broken_template_and_raise_exception():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for %}")
    with pytest.raises(ChatTemplateError, match="refused the messages: no system"):
        ChatTemplate("{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}{% endif %}").render(CONV)


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(CONV)


def test_template_saved_with_the_tokenizer_and_checkpoint(tmp_path):
    tok = get_tokenizer("gpt2")
    assert tok.chat_template is None and template_for(tok).is_default
    tok.chat_template = CHATML
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / TEMPLATE_FILE).read_text() == CHATML
    back = load_tokenizer(tmp_path / "tok")
    assert back.chat_template == CHATML and template_for(back).stop == ("<|im_end|>",)
    assert load_chat_template(tmp_path / "tok").source == CHATML
    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    save_model(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8)), tmp_path / "ckpt", tokenizer=back)
    assert (tmp_path / "ckpt" / "tokenizer" / TEMPLATE_FILE).exists() and load_chat_template(tmp_path / "ckpt").source == CHATML
    get_tokenizer("gpt2").save(tmp_path / "plain")  # a tokenizer without a template writes none
    assert not (tmp_path / "plain" / TEMPLATE_FILE).exists() and load_tokenizer(tmp_path / "plain").chat_template is None
    assert load_chat_template(tmp_path / "plain").is_default


def test_hf_export_carries_the_template_and_transformers_renders_it_the_same(tmp_path):
    transformers = pytest.importorskip("transformers")
    from conftest import hf_model, ours_from_hf

    from gpt2kit.interop.hf_export import export_hf

    model = ours_from_hf(hf_model(n_layer=1, n_head=2, n_embd=32, n_positions=64))
    tok = get_tokenizer("gpt2")
    for source in (ChatTemplate().source, CHATML):
        tok.chat_template = source
        export_hf(model, tok, str(tmp_path / "hf"))
        assert load_tokenizer(tmp_path / "hf").chat_template == source  # gpt2kit reads the export back
        hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
        msgs = check_messages(CONV)
        ours = template_for(tok)
        for gen in (True, False):
            assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == ours.render(msgs, gen)
