"""`gpt2kit generate` and `gpt2kit interactive`: sample text from a model, streamed as it comes."""
from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, cli_message, load_model_args

SAMPLE_RULE = "=" * 40


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt (or sample unconditionally), streaming text",
                       description="Continue a prompt with a GPT-2 model, streaming the text as it is generated.")
    p.add_argument("prompt", nargs="?", default=None, help="the text to continue")
    p.add_argument("--unconditional", action="store_true", help="sample from <|endoftext|> alone, like OpenAI's generate_unconditional_samples.py")
    add_model_args(p, backend=True)
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    q = sub.add_parser("interactive", help="'Model prompt >>>' loop, like OpenAI's interactive_conditional_samples.py",
                       description="Read prompts from stdin and print samples for each, until EOF.")
    add_model_args(q, backend=True)
    add_sampling_args(q)
    q.set_defaults(func=cmd_interactive)


def stream_samples(model, tok, prompt_ids, args, out=None, show_prompt: str = "") -> None:
    from gpt2kit.sampling_params import check_sampling, check_seed
    from gpt2kit.streaming import StopStrings

    out = out or sys.stdout  # looked up per call: a default bound at import would outlive a redirected stdout
    check_seed(args.seed)  # before any output; the same checks for both backends
    check_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    stop = StopStrings(args.stop)
    if args.backend == "numpy":
        import numpy as np

        from gpt2kit.numpy_gpt2 import generate_text

        rng = np.random.default_rng(args.seed)  # None: seeded from the OS
        engine = {"rng": rng}
    else:
        import torch

        from gpt2kit.generation import generate_text

        g = torch.Generator(device=model.transformer.wte.weight.device)
        if args.seed is not None:
            g.manual_seed(args.seed)
        else:
            g.seed()
        engine = {"generator": g}
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"{SAMPLE_RULE} SAMPLE {i + 1} {SAMPLE_RULE}", file=out)
        out.write(show_prompt)
        for piece in generate_text(
            model, tok, prompt_ids, args.max_new_tokens, stop=stop, **engine,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
        ):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()


def _encode_prompt(tok, text: str, allow_special: bool) -> list[int]:
    from gpt2kit.errors import GPT2KitError

    ids = tok.encode(text, allowed_special="all" if allow_special else "none_raise")
    if not ids:
        if tok.eot_token is None:
            raise GPT2KitError("the prompt is empty and this tokenizer has no <|endoftext|> to start from; give a prompt")
        ids = [tok.eot_token]
    return ids


def cmd_generate(args) -> int:
    from gpt2kit.errors import GPT2KitError

    if args.unconditional == (args.prompt is not None):
        raise GPT2KitError("give a prompt, or --unconditional to sample from <|endoftext|> alone (not both)")
    model, tok = load_model_args(args)
    if args.unconditional:
        ids = _encode_prompt(tok, "", False)
        stream_samples(model, tok, ids, args)
    else:
        ids = _encode_prompt(tok, args.prompt, args.allow_special)
        stream_samples(model, tok, ids, args, show_prompt=args.prompt)
    return 0


def cmd_interactive(args) -> int:
    model, tok = load_model_args(args)
    while True:
        try:
            text = input("Model prompt >>> ")
        except EOFError:
            print()
            return 0
        if not text.strip():
            print("Prompt should not be empty!")
            continue
        from gpt2kit.errors import GPT2KitError

        try:
            ids = _encode_prompt(tok, text, args.allow_special)
        except GPT2KitError as e:  # a bad prompt should not end the session
            print(f"error: {cli_message(str(e))}", file=sys.stderr)
            continue
        stream_samples(model, tok, ids, args)
        print("=" * 80)
