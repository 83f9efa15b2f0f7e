"""`gpt2kit demo NAME`: small runnable demos that teach how a GPT works (see gpt2kit.demos)."""
from __future__ import annotations

import os

from . import types as T


def register(sub) -> None:
    p = sub.add_parser("demo", help="runnable lessons: babygpt (a GPT as a Markov chain), addition (a GPT learns to add)",
                       description="Small demos that train a GPT on the CPU in seconds to minutes and show what it learned.")
    demos = p.add_subparsers(dest="demo", metavar="DEMO", parser_class=type(p))
    demos.required = True

    b = demos.add_parser("babygpt", help="vocab {0,1}, context 3: train on 111101111011110, print the 8-state table, draw the graph",
                         description="Karpathy's babyGPT: a GPT with 2 tokens and context 3 is a Markov chain over 8 states. "
                                     "Trains it, prints P(next=1) per state before/after next to the counts in the data, writes the state graph.")
    b.add_argument("--steps", type=T.nonneg_int, default=200, help="full-batch AdamW steps (default: 200; Karpathy's run used 50)")
    b.add_argument("--seed", type=int, default=1337, help="torch seed for the initial weights (default: 1337)")
    b.add_argument("--out", default="babygpt.png", help="where to write the state graph PNG (default: babygpt.png)")
    b.add_argument("--threads", type=T.positive_int, default=1, help="torch CPU threads (default: 1; the model is tiny)")
    b.set_defaults(func=cmd_babygpt)

    a = demos.add_parser("addition", help="train a GPT to add n-digit numbers and score it on held-out problems",
                         description="minGPT's play_math: digits of a and b, then the sum reversed; loss on the sum only. "
                                     "Problems are drawn on the fly; a held-out set is never trained on and scored by exact match.")
    a.add_argument("--digits", type=T.positive_int, default=2, help="digits per operand, 1..6 (default: 2)")
    a.add_argument("--steps", type=T.positive_int, default=1500, help="training steps (default: 1500)")
    a.add_argument("--batch-size", type=T.positive_int, default=256, help="problems per step (default: 256)")
    a.add_argument("--lr", type=T.positive_float, default=3e-3, help="peak learning rate (default: 3e-3)")
    a.add_argument("--test-size", type=T.positive_int, default=None, help="held-out problems (default: 1000, or a tenth of all problems if fewer)")
    a.add_argument("--max-seconds", type=T.positive_float, default=300.0, help="stop training after this long (default: 300)")
    a.add_argument("--seed", type=int, default=1337, help="seed for the split, the batches and the weights (default: 1337)")
    a.add_argument("--examples", type=T.nonneg_int, default=6, help="worked examples to print (default: 6)")
    a.add_argument("--threads", type=T.positive_int, default=1, help="torch CPU threads (default: 1; the model is tiny)")
    a.set_defaults(func=cmd_addition)

    c = demos.add_parser("chat-data", help="write synthetic arithmetic conversations (JSONL of {\"messages\": [...]}) for `train --sft`",
                         description="Arithmetic questions and answers in OpenAI's messages format, deterministic by --seed. "
                                     "A fixed tenth of the questions is never asked (see gpt2kit.demos.chat_data.held_out).")
    c.add_argument("--out", required=True, help="the JSONL file to write")
    c.add_argument("--n", type=T.positive_int, default=2000, help="conversations (default: 2000)")
    c.add_argument("--seed", type=T.nonneg_int, default=0, help="random seed (default: 0)")
    c.add_argument("--max-operand", type=T.positive_int, default=9, help="operands are 0..this (default: 9)")
    c.set_defaults(func=cmd_chat_data)


def cmd_babygpt(args) -> int:
    from gpt2kit.demos import babygpt
    from gpt2kit.errors import GPT2KitError
    from gpt2kit.extras import require

    require("matplotlib", "the babygpt graph")  # before training, not after

    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise GPT2KitError(f"cannot write {args.out}: the directory {parent} does not exist; create it or pass another --out")
    babygpt.main(steps=args.steps, seed=args.seed, out=args.out, threads=args.threads)
    return 0


def cmd_addition(args) -> int:
    from gpt2kit.demos import addition

    addition.main(digits=args.digits, steps=args.steps, batch_size=args.batch_size, lr=args.lr, test_size=args.test_size,
                  max_seconds=args.max_seconds, seed=args.seed, examples=args.examples, threads=args.threads)
    return 0


def cmd_chat_data(args) -> int:
    from gpt2kit.demos import chat_data

    from .common import check_out_file

    check_out_file(args.out)
    convs = chat_data.conversations(args.n, seed=args.seed, max_operand=args.max_operand)
    chat_data.write_jsonl(args.out, convs)
    turns = sum(m["role"] == "assistant" for c in convs for m in c["messages"])
    print(f"wrote {args.out}: {len(convs)} conversations, {turns} question turns "
          f"({len(chat_data.held_out(args.max_operand))} questions held out)")
    return 0
