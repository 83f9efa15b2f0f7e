"""`gpt2kit prepare`: tokenise text, JSONL, Parquet or Hugging Face datasets into token shards + meta.json."""
from __future__ import annotations

from ..shards import SHARD_TOKENS
from . import types as T


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenise a corpus into token shards + meta.json",
                       description="Tokenise text files, directories (recursively), JSONL, Parquet or Hugging Face datasets into "
                                   "a prepared data dir of --shard-tokens shards, streaming (memory stays bounded). Each document "
                                   "ends with the tokenizer's end-of-text token, where it has one. Validation: the first "
                                   "--val-tokens tokens; without it, the first shard (llm.c), or for a corpus of one shard its "
                                   "last --val-fraction (nanoGPT).")
    p.add_argument("inputs", nargs="*", help="text files, directories, globs, .jsonl or .parquet files, or a dataset saved "
                   "with datasets' save_to_disk (with --dataset parquet|json|text|csv: that builder's data files)")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 | char (字) | word (jieba 分词) | bpe:DIR (from `gpt2kit tokenizer train`) | "
                   "bert:vocab.txt (GPT2-Chinese) | a saved tokenizer dir (default: gpt2)")
    p.add_argument("--dataset", default=None, help="a Hugging Face dataset: a hub name (streamed; e.g. HuggingFaceFW/fineweb-edu), "
                   "a local dataset dir, or a builder (parquet, json, text, csv) reading the inputs; needs gpt2kit[data]")
    p.add_argument("--name", default=None, help="the dataset's config (e.g. sample-10BT)")
    p.add_argument("--split", default="train", help="the dataset's split (default: train)")
    p.add_argument("--shard-tokens", type=T.positive_int, default=SHARD_TOKENS, help=f"tokens per shard (default: {SHARD_TOKENS:,}, as llm.c)")
    p.add_argument("--val-tokens", type=T.positive_int, default=None, help="the first N tokens are validation (default: the first shard)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="a corpus of one shard: share of tokens held out for validation (default: 0.1)")
    p.add_argument("--field", default="text", help="JSONL/Parquet/dataset field holding the text (default: text)")
    p.add_argument("--doc-sep", default=None, help="a line that separates documents inside text files (e.g. %%); "
                   "char/word vocabularies then get an <|endoftext|> id to end each document")
    p.add_argument("--min-freq", type=T.positive_int, default=1, help="corpus-built vocabularies: drop rarer symbols (they become unknown)")
    p.add_argument("--num-proc", type=T.positive_int, default=2, help="tokenising processes (default: 2); the output is the same for any number")
    p.add_argument("--resume", action="store_true", help="continue an interrupted prepare (killed, Ctrl-C) from its last complete shard")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    import sys

    from gpt2kit.data import prepare

    try:
        r = prepare(args.inputs, args.out, args.tokenizer, val_fraction=args.val_fraction, val_tokens=args.val_tokens,
                    shard_tokens=args.shard_tokens, field=args.field, doc_sep=args.doc_sep, dataset=args.dataset, name=args.name,
                    split=args.split, num_proc=args.num_proc, min_freq=args.min_freq, resume=args.resume,
                    progress=sys.stderr.isatty())  # a progress bar only for a person watching, not in logs
    except KeyboardInterrupt:
        print("\ninterrupted; the shards written so far are kept: run the same command with --resume to continue", file=sys.stderr)
        return 130
    unk = "" if r.unknown_rate is None else f", unknown-token rate {r.unknown_rate:.4%}"
    shards = "" if r.shards <= 2 else f" in {r.shards} shards"
    print(f"wrote {r.out_dir}: vocab {r.n_vocab}, train {r.train_tokens:,} tokens, val {r.val_tokens:,} tokens{shards}{unk}")
    if r.unknown_rate is not None and r.unknown_rate > 0.01:
        print(f"note: {r.unknown_rate:.2%} of the tokens are unknown; lower --min-freq, or use a bpe tokenizer (no unknowns)")
    return 0
