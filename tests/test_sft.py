"""Chat SFT (`gpt2kit train --sft`), the synthetic chat data and `gpt2kit chat`."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import assert_one_line_error, cli_in_process as cli, run_cli

from gpt2kit.chat_template import assistant_token_mask, template_for
from gpt2kit.demos import chat_data
from gpt2kit.sft import SFT_TEMPLATE, SFTData, sft_tokenizer
from gpt2kit.tokenization import CharTokenizer, get_tokenizer

CONVO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2 + 2?"},
         {"role": "assistant", "content": "4."}]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "128", "--batch-size", "8",
        "--eval-iters", "2", "--device", "cpu", "--no-progress", "--no-plot", "--threads", "1"]


def _write(path, convs):
    path.write_text("".join(json.dumps(c) + "\n" for c in convs), encoding="utf-8")
    return path


# -- the loss mask ----------------------------------------------------------------------------------

def test_mask_covers_exactly_the_assistant_tokens_char_level():
    tok = CharTokenizer.build(["System: Be brief.\n\nUser: Hi there 2+?Assistant: Hello.4"], eot=True)
    tok.chat_template = SFT_TEMPLATE  # what `train --sft` gives a model without a template of its own
    ids, mask = assistant_token_mask(template_for(tok), tok, CONVO)
    # written out by hand: what the assistant says is its reply and the end-of-text token that ends it
    eot = tok.decode([tok.eot_token])
    parts = [("System: Be brief.\n\nUser: Hi there\n\nAssistant:", False), (" Hello.", True), (eot, True),
             ("\n\nUser: 2 + 2?\n\nAssistant:", False), (" 4.", True), (eot, True)]
    want_ids, want_mask = [], []
    for text, said in parts:
        part = tok.encode(text, allowed_special="all")
        want_ids += part
        want_mask += [said] * len(part)
    assert ids == want_ids and len(ids) == 83
    assert mask == want_mask


def test_mask_covers_exactly_the_assistant_tokens_gpt2():
    tok = get_tokenizer("gpt2")
    ids, mask = assistant_token_mask(template_for(tok), tok, CONVO)
    pieces = [(tok.decode([t]), m) for t, m in zip(ids, mask)]
    assert [p for p, m in pieces if m] == [" Hello", ".", "\n", "\n", " 4", ".", "<|endoftext|>"]
    assert "".join(p for p, m in pieces if not m) == "System: Be brief.\n\nUser: Hi there\n\nAssistant:User: 2 + 2?\n\nAssistant:"


# -- packed rows ------------------------------------------------------------------------------------

def test_rows_start_at_a_conversation_and_target_only_assistant_tokens(tmp_path):
    path = _write(tmp_path / "c.jsonl", chat_data.conversations(40, seed=3))
    tok = sft_tokenizer(str(path), "char", "scratch")
    data = SFTData(str(path), tok)
    assert (len(data.splits["train"]), len(data.splits["val"])) == (36, 4)
    x, y = data.batch("train", 4, 64, (1, 2, 3))
    x2, y2 = data.batch("train", 4, 64, (1, 2, 3))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # the same key, the same rows: exact resume
    starts = {tuple(c.ids[:8]) for c in data.splits["train"]}
    for row_x, row_y in zip(x, y):
        assert tuple(row_x[:8]) in starts
        # each target is the next input token where that token is the assistant's, else -1
        text = tok.decode(row_x.tolist())
        said = [i for i, t in enumerate(row_y) if t != -1]
        assert all(row_y[i] == row_x[i + 1] for i in said if i + 1 < len(row_x))
        # the first target is the space that starts the first reply
        first = text.index("Assistant:") + len("Assistant:") - 1
        assert said[0] == first and row_y[first] == tok.encode(" ")[0]
        assert not any(t != -1 for t in row_y[:first])


def test_sft_resume_is_bit_identical(tmp_path):
    from gpt2kit.train import resume, train
    from gpt2kit.train_config import make_config

    path = _write(tmp_path / "c.jsonl", chat_data.conversations(60, seed=1))
    flags = {"sft": True, "data": str(path), "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 128, "batch_size": 4,
             "eval_iters": 2, "eval_interval": 5, "lr_decay_iters": 10, "device": "cpu", "progress": False, "plot": False,
             "threads": 1}
    train(make_config(None, None, {**flags, "out": str(tmp_path / "a"), "max_iters": 10}), log=lambda *a: None)
    train(make_config(None, None, {**flags, "out": str(tmp_path / "b"), "max_iters": 5}), log=lambda *a: None)
    resume(str(tmp_path / "b"), max_iters=10, log=lambda *a: None)
    a = (tmp_path / "a" / "state" / "step-00000010" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "state" / "step-00000010" / "model.safetensors").read_bytes()
    assert a == b


def test_sft_from_a_gpt2_model_trains_on_its_tokens_and_saves_the_template(tiny_checkpoint, tmp_path):
    from gpt2kit.tokenization import load_tokenizer

    path = _write(tmp_path / "c.jsonl", chat_data.conversations(20, seed=2))
    out = tmp_path / "ft"
    r = cli("train", "--sft", "--data", str(path), "--init-from", str(tiny_checkpoint), "--out", str(out),
                "--max-iters", "2", "--eval-interval", "2", "--batch-size", "2", "--eval-iters", "1", "--device", "cpu",
                "--no-progress", "--no-plot", "--threads", "1")
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(out)
    assert tok.n_vocab == 50257 and tok.chat_template == SFT_TEMPLATE  # `gpt2kit chat`/serve render what it trained on
    assert (out / "tokenizer" / "chat_template.jinja").read_text() == SFT_TEMPLATE


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, needle", [
    ("not json", "c.jsonl:2 is not JSON; each line must be one"),
    ('{"text": "hi"}', 'c.jsonl:2 has no "messages" field'),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "c.jsonl:2: messages[0].role is 'bot'; use one of system, user, assistant"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "c.jsonl:2 has no assistant turn to train on"),
    ('{"messages": "hi"}', "c.jsonl:2: messages must be a non-empty list"),
    (json.dumps({"messages": [{"role": "user", "content": "1 + 1 " * 40}, {"role": "assistant", "content": "2."}]}),
     "c.jsonl:2 is 262 tokens, longer than block_size + 1 = 129; shorten or split that conversation, or train with a larger --block-size"),
])
def test_bad_conversations_are_one_line_errors_naming_the_line(tmp_path, line, needle):
    good = json.dumps(chat_data.conversations(1)[0])
    path = tmp_path / "c.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    r = cli("train", "--sft", "--data", str(path), "--out", str(tmp_path / "run"), "--max-iters", "1", *TINY)
    assert_one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


def test_sft_data_that_is_missing_or_too_small_is_one_line(tmp_path):
    r = cli("train", "--sft", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "run"), *TINY)
    assert_one_line_error(r, "SFT data not found")
    path = _write(tmp_path / "one.jsonl", chat_data.conversations(1))
    r = cli("train", "--sft", "--data", str(path), "--out", str(tmp_path / "run"), *TINY)
    assert_one_line_error(r, "holds 1 conversation(s); SFT needs at least 2")


# -- the synthetic data -----------------------------------------------------------------------------

def test_chat_data_is_deterministic_and_never_asks_the_held_out_questions(tmp_path):
    r = cli("demo", "chat-data", "--out", str(tmp_path / "d" / "c.jsonl"), "--n", "300", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'd' / 'c.jsonl'}: 300 conversations")
    lines = (tmp_path / "d" / "c.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == chat_data.conversations(300, seed=7)
    assert chat_data.conversations(300, seed=8) != chat_data.conversations(300, seed=7)
    held = chat_data.held_out()
    assert len(held) == 40  # a tenth of 10 x 10 operand pairs x 4 wordings
    asked = {m["content"] for c in chat_data.conversations(2000) for m in c["messages"] if m["role"] == "user"}
    assert not asked & {q for q, _ in held}
    for q, a in held:
        x, y = map(int, re.findall(r"\d+", q))
        assert a == f"{x} + {y} = {x + y}."


# -- gpt2kit chat ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    path = _write(d / "c.jsonl", chat_data.conversations(200, seed=0))
    r = cli("train", "--sft", "--data", str(path), "--out", str(d / "run"), "--max-iters", "30", "--eval-interval", "30",
                "--always-save-checkpoint", *TINY)
    assert r.returncode == 0, r.stderr
    return d / "run"


def _greedy_reply(model_dir, messages, max_new_tokens):
    from gpt2kit.generation import generate_text
    from gpt2kit.loading import load

    model, tok = load(str(model_dir))
    template = template_for(tok)
    ids = tok.encode(template.render(messages), allowed_special="all")
    return "".join(generate_text(model, tok, ids, max_new_tokens, stop=template.stop, temperature=0.0)).strip()


def test_chat_streams_the_templates_reply_with_reset_and_exit(tiny_chat_model):
    r = cli("chat", "--model", str(tiny_chat_model), "--temperature", "0", "--max-new-tokens", "12",
                input="What is 1 + 2?\nAdd 3 and 4.\n/reset\nAdd 3 and 4.\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    q1, q2 = {"role": "user", "content": "What is 1 + 2?"}, {"role": "user", "content": "Add 3 and 4."}
    a1 = _greedy_reply(tiny_chat_model, [q1], 12)
    a2 = _greedy_reply(tiny_chat_model, [q1, {"role": "assistant", "content": a1}, q2], 12)
    a3 = _greedy_reply(tiny_chat_model, [q2], 12)
    assert r.stdout.splitlines() == [f"User: {q1['content']}", f"Assistant: {a1}", f"User: {q2['content']}",
                                     f"Assistant: {a2}", "User: /reset", "(conversation reset)",
                                     f"User: {q2['content']}", f"Assistant: {a3}", "User: /exit"]


def test_chat_drops_the_oldest_turns_to_stay_in_the_context(tiny_chat_model):
    # block 128, 64 tokens kept for the reply: a second 40-character question leaves no room for the first turn
    q = ["What is 1 + 2? " * 2, "Add 3 and 4. Add 3 and 4. Add 3 and 4."]
    r = cli("chat", "--model", str(tiny_chat_model), "--temperature", "0", "--max-new-tokens", "64",
                input="\n".join(q) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "(dropped the oldest 1 turn to stay within the 128-token context)"
    want = _greedy_reply(tiny_chat_model, [{"role": "user", "content": q[1]}], 64)
    assert r.stdout.splitlines()[-1] == f"Assistant: {want}"


def test_chat_refuses_a_message_longer_than_the_context_and_goes_on(tiny_chat_model):
    r = cli("chat", "--model", str(tiny_chat_model), "--temperature", "0", "--max-new-tokens", "8",
                input="x" * 200 + "\nAdd 3 and 4.\n")
    assert r.returncode == 0
    assert "that message alone is 218 tokens; the model's context (128) leaves 120 for a message" in r.stderr
    assert r.stdout.splitlines()[-1].startswith("Assistant: ")


def test_chat_refuses_bad_sampling_flags_in_one_line(tiny_chat_model):
    r = cli("chat", "--model", str(tiny_chat_model), "--top-p", "2", input="hi\n")
    assert_one_line_error(r, "top-p")


# -- the model learns: held-out questions through `gpt2kit chat` and /v1/chat/completions ------------

SFT_RUN = ["--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--block-size", "128", "--batch-size", "16",
           "--max-iters", "1600", "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-iters", "50", "--lr-decay-iters", "1600",
           "--eval-interval", "400", "--eval-iters", "5", "--device", "cpu", "--no-progress", "--no-plot", "--threads", "1"]


@pytest.mark.slow
def test_sft_model_answers_held_out_questions_in_chat_and_the_server(tmp_path):
    from serve_helpers import Server

    openai = pytest.importorskip("openai")
    data = tmp_path / "chat.jsonl"
    r = run_cli("demo", "chat-data", "--out", str(data), "--n", "2000")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--sft", "--data", str(data), "--out", str(tmp_path / "run"), *SFT_RUN, timeout=1800)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    held = chat_data.held_out()
    # gpt2kit chat: every question in a fresh conversation (/reset), greedy
    r = run_cli("chat", "--model", str(tmp_path / "run"), "--temperature", "0", "--max-new-tokens", "20",
                input="".join(f"{q}\n/reset\n" for q, _ in held))
    assert r.returncode == 0, r.stderr
    replies = [ln[len("Assistant: "):] for ln in r.stdout.splitlines() if ln.startswith("Assistant: ")]
    chat_right = sum(got == want for got, (_, want) in zip(replies, held))
    # the server: the same questions through the openai client
    s = Server("--model", str(tmp_path / "run"), "--no-page", "--threads", "1")
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        served = [client.chat.completions.create(model="run", messages=[{"role": "user", "content": q}], temperature=0,
                                                 max_tokens=20).choices[0].message.content for q, _ in held]
    finally:
        s.close()
    server_right = sum(got == want for got, (_, want) in zip(served, held))
    print(f"held-out questions answered right: chat {chat_right}/{len(held)}, server {server_right}/{len(held)}")
    for (q, want), got in zip(held, served):
        if got != want:
            print(f"  {q!r}: server said {got!r}, want {want!r}")
    assert len(replies) == len(held)
    assert chat_right >= 0.9 * len(held) and server_right >= 0.9 * len(held)
    assert replies == served  # both render the same template and decode greedily
