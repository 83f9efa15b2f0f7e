"""`gpt2kit chat`: a multi-turn conversation with a model through its chat template, streamed.

Each turn renders the whole conversation with the template (chat_template.template_for: what the
server's /v1/chat/completions renders) and continues it; the reply ends at the template's stop
strings or the end-of-text token. When the rendered conversation would leave less than the reply's
room in the context, the oldest turns are dropped (said on stderr). /reset forgets the conversation,
/exit (or EOF) ends the session. Read from a pipe, each user line is echoed after "User: ".
"""
from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, cli_message, load_model_args

COMMANDS = "/reset forgets the conversation, /exit ends it"


def register(sub) -> None:
    p = sub.add_parser("chat", help="talk to a chat model (e.g. one from `train --sft`): streamed, multi-turn",
                       description=f"A multi-turn chat through the model's chat template, streamed. {COMMANDS}.")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", default=None, help="a system message to start each conversation with")
    p.set_defaults(func=cmd_chat)


def fit_context(template, tok, messages: list[dict], budget: int) -> tuple[list[int], int]:
    """(prompt ids, turns dropped): the rendered conversation, oldest user/assistant turns dropped (a system
    message stays) until it is at most budget tokens; the last user message always stays."""
    dropped = 0
    while True:
        ids = tok.encode(template.render(messages), allowed_special="all")
        first = 1 if messages[0]["role"] == "system" else 0
        if len(ids) <= budget or len(messages) - first <= 1:
            return ids, dropped
        del messages[first:first + 2]  # the oldest user message and its reply
        dropped += 1


def reply_budget(args, block_size: int) -> int:
    """Tokens kept free for the reply: max_new_tokens, at most half the context."""
    return min(args.max_new_tokens, block_size // 2)


def stream_reply(model, tok, ids: list[int], stop, args, generator, out) -> str:
    """Stream the reply to out (its leading whitespace dropped, as the server does); return its text."""
    from gpt2kit.generation import generate_text

    text = []
    for piece in generate_text(model, tok, ids, args.max_new_tokens, stop=stop, generator=generator,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               repetition_penalty=args.repetition_penalty):
        if not text:
            piece = piece.lstrip()
            if not piece:
                continue
        text.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(text).strip()


def cmd_chat(args) -> int:
    import torch

    from gpt2kit.chat_template import template_for
    from gpt2kit.errors import GPT2KitError
    from gpt2kit.sampling_params import check_sampling, check_seed
    from gpt2kit.streaming import StopStrings

    check_seed(args.seed)
    check_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    model, tok = load_model_args(args)
    template = template_for(tok)
    stop = StopStrings(tuple(template.stop) + tuple(args.stop))
    g = torch.Generator(device=model.transformer.wte.weight.device)
    g.manual_seed(args.seed) if args.seed is not None else g.seed()
    block = model.config.block_size
    budget = block - reply_budget(args, block)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    tty = sys.stdin.isatty()
    if tty:
        print(f"chatting with {args.model} ({COMMANDS})")
    while True:
        try:
            line = input("User: " if tty else "")
        except EOFError:
            return 0
        if not tty:
            print(f"User: {line}")
        text = line.strip()
        if text == "/exit":
            return 0
        if text == "/reset":
            messages = list(start)
            print("(conversation reset)")
            continue
        if not text:
            continue
        convo = messages + [{"role": "user", "content": line}]
        try:
            ids, dropped = fit_context(template, tok, convo, budget)
        except GPT2KitError as e:  # bad text should not end the session
            print(f"error: {cli_message(str(e))}", file=sys.stderr)
            continue
        if len(ids) > budget:
            print(f"error: that message alone is {len(ids)} tokens; the model's context ({block}) leaves {budget} "
                  "for a message; send a shorter one", file=sys.stderr)
            continue
        if dropped:
            print(f"(dropped the oldest {dropped} turn{'s' * (dropped > 1)} to stay within the {block}-token context)",
                  file=sys.stderr)
        messages = convo
        sys.stdout.write("Assistant: ")
        messages.append({"role": "assistant", "content": stream_reply(model, tok, ids, stop, args, g, sys.stdout)})
