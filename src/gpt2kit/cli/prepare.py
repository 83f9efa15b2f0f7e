"""`gpt2kit prepare`: tokenise text files, directories or JSONL into train/val token files."""
from __future__ import annotations

from . import types as T


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenise a corpus into train.bin / val.bin + meta.json",
                       description="Tokenise text files, directories (recursively) or JSONL into a prepared data dir. "
                                   "Each document ends with the tokenizer's end-of-text token, where it has one.")
    p.add_argument("inputs", nargs="+", help="text files, directories, globs or .jsonl files")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 | char (字) | word (jieba 分词) | bpe:DIR (from `gpt2kit tokenizer train`) | "
                   "bert:vocab.txt (GPT2-Chinese) | a saved tokenizer dir (default: gpt2)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens held out for validation (default: 0.1)")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--doc-sep", default=None, help="a line that separates documents inside text files (e.g. %%); "
                   "char/word vocabularies then get an <|endoftext|> id to end each document")
    p.add_argument("--min-freq", type=T.positive_int, default=1, help="corpus-built vocabularies: drop rarer symbols (they become unknown)")
    p.add_argument("--num-proc", type=T.positive_int, default=2, help="tokenising processes (default: 2)")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    import sys

    from gpt2kit.data import prepare

    r = prepare(args.inputs, args.out, args.tokenizer, val_fraction=args.val_fraction, field=args.field,
                doc_sep=args.doc_sep, num_proc=args.num_proc, min_freq=args.min_freq,
                progress=sys.stderr.isatty())  # a progress bar only for a person watching, not in logs
    unk = "" if r.unknown_rate is None else f", unknown-token rate {r.unknown_rate:.4%}"
    print(f"wrote {r.out_dir}: vocab {r.n_vocab}, train {r.train_tokens:,} tokens, val {r.val_tokens:,} tokens{unk}")
    if r.unknown_rate is not None and r.unknown_rate > 0.01:
        print(f"note: {r.unknown_rate:.2%} of the tokens are unknown; lower --min-freq, or use a bpe tokenizer (no unknowns)")
    return 0
