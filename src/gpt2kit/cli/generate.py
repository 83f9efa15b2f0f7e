"""`gpt2kit generate` and `gpt2kit interactive`: sample text from a model, streamed as it comes."""
from __future__ import annotations

import argparse
import sys

from . import types as T

SAMPLE_RULE = "=" * 40


def add_model_args(p: argparse.ArgumentParser, backend: bool = False) -> None:
    p.add_argument("--model", default="gpt2", help="hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), HF-format dir or gpt2kit checkpoint dir (default: gpt2)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec; default: the one saved with the model (GPT-2 BPE for hub/HF models)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "int8"],
                   help="weights: float32 (default), bfloat16, float16, or int8 (int8 weights, CPU only: fastest decode)")
    if backend:
        p.add_argument("--backend", default="torch", choices=["torch", "numpy"], help="torch (default) or numpy: pure NumPy GPT-2, float32 on the CPU, no torch imported")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=T.positive_int, default=100, help="tokens to generate per sample (default: 100)")
    p.add_argument("--temperature", type=T.temperature, default=1.0, help="softmax temperature; 0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=T.top_k, default=40, help="keep the k most likely tokens; 'none' = all (default: 40)")
    p.add_argument("--top-p", type=T.top_p, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off (default: 1.0)")
    p.add_argument("--repetition-penalty", type=T.positive_float, default=1.0, help="CTRL-style penalty on seen tokens; 1 = off")
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same samples")
    p.add_argument("--num-samples", type=T.positive_int, default=1, help="independent samples to draw (default: 1)")
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    p.add_argument("--allow-special", action="store_true", help="let '<|endoftext|>' in the prompt be the special token")


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


def load(args):
    """(model, tokenizer) for the CLI flags, with the tokenizer checked against the model."""
    from gpt2kit.errors import GPT2KitError
    from gpt2kit.hub import resolve_model_path
    from gpt2kit.tokenization import get_tokenizer

    backend = getattr(args, "backend", "torch")  # only generate/interactive offer --backend
    if backend == "numpy" and (args.device != "cpu" or args.dtype != "float32"):
        raise GPT2KitError("--backend numpy runs float32 on the CPU; drop --device/--dtype or use --backend torch")
    path = resolve_model_path(args.model)
    tok = get_tokenizer(args.tokenizer or path)
    if backend == "numpy":
        from gpt2kit.numpy_gpt2 import load as load_numpy

        model = load_numpy(path)
    else:
        from gpt2kit.weights import load_model

        model = load_model(path, dtype=args.dtype, device=args.device)
    if tok.n_vocab != model.config.vocab_size:
        raise GPT2KitError(f"the tokenizer has {tok.n_vocab} tokens but the model expects {model.config.vocab_size}; pass the model's own --tokenizer")
    return model, tok


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
    model, tok = load(args)
    if args.unconditional:
        ids = _encode_prompt(tok, "", False)
        stream_samples(model, tok, ids, args)
    else:
        ids = _encode_prompt(tok, args.prompt, args.allow_special)
        stream_samples(model, tok, ids, args, show_prompt=args.prompt)
    return 0


def cmd_interactive(args) -> int:
    model, tok = load(args)
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
            print(f"error: {e}", file=sys.stderr)
            continue
        stream_samples(model, tok, ids, args)
        print("=" * 80)
