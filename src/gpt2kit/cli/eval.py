"""`gpt2kit eval perplexity|lambada|hellaswag`: score a model, print the numbers, save them as JSON."""
from __future__ import annotations

from . import types as T
from ..fileio import write_errors
from .common import add_model_args, check_out_file, load_model_args

TASKS = ("perplexity", "lambada", "hellaswag")


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity (sliding window), LAMBADA or HellaSwag",
                       description="Evaluate a model. LAMBADA and HellaSwag data download from their published URLs when "
                                   "online; offline, give --data PATH.")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", default=None,
                   help="perplexity: a text file (tokenized with the model's tokenizer), a gpt2kit/llm.c token file, or a prepared "
                        "data dir or its meta.json (its val shards); "
                        "lambada: lambada_test.jsonl; hellaswag: hellaswag_val.jsonl (default: download)")
    p.add_argument("--stride", type=T.positive_int, default=None,
                   help="perplexity window stride in tokens (default: half the window, 512 for GPT-2's 1024)")
    p.add_argument("--max-length", type=T.positive_int, default=None, help="perplexity window length (default: the model's context)")
    p.add_argument("--batch-size", type=T.positive_int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument("--limit", type=T.positive_int, default=None, help="evaluate only the first N examples (lambada, hellaswag)")
    p.add_argument("--out", default=None, help="write the result as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    import json

    from gpt2kit import evaluate as E
    from gpt2kit.errors import GPT2KitError

    progress = not args.no_progress
    if args.out:
        check_out_file(args.out)
    if args.task == "perplexity" and args.data is None:
        raise GPT2KitError("perplexity needs --data PATH (a text file or a token file such as a prepared val.bin)")
    data = args.data or E.fetch_dataset(args.task, progress=progress)
    model, tok = load_model_args(args)
    if args.task == "perplexity":
        tokens = E.load_eval_tokens(data, tok)
        result = E.perplexity(model, tokens, stride=args.stride, max_length=args.max_length, batch_size=args.batch_size, progress=progress)
    elif args.task == "lambada":
        ex = E.lambada_examples(E.read_jsonl(data), data)[: args.limit]
        result = E.lambada(model, tok, ex, batch_size=args.batch_size, progress=progress)
    else:
        ex = E.hellaswag_examples(E.read_jsonl(data), data)[: args.limit]
        result = E.hellaswag(model, tok, ex, progress=progress)
    result = {**result, "model": args.model, "data": data}
    print(json.dumps(result, indent=1))
    if args.out:
        with write_errors(args.out):
            E.write_result(args.out, result)
    return 0
