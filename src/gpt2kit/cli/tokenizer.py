"""`gpt2kit tokenizer train`: learn a vocabulary from text files and save it as a tokenizer directory."""
from __future__ import annotations

from . import types as T
from ..fileio import write_errors
from .common import check_out_dir

KINDS = ("bpe", "char", "word")


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a tokenizer (byte-level BPE, char or word vocabulary) on text files",
                       description="Tokenizer tools. `gpt2kit tokenizer train FILES --kind bpe --vocab-size 8000 --out DIR`.")
    verbs = p.add_subparsers(dest="tokenizer_verb", metavar="ACTION", parser_class=type(p))
    verbs.required = True
    t = verbs.add_parser("train", help="learn a vocabulary from UTF-8 text files",
                         description="Learn a vocabulary and save it to --out; use it as --tokenizer OUT (or bpe:OUT).")
    t.add_argument("files", nargs="+", help="UTF-8 text files")
    t.add_argument("--kind", choices=KINDS, default="bpe", help="bpe: byte-level BPE via HF tokenizers (no unknowns); "
                   "char: one id per character (字); word: jieba words (分词) with character fallback (default: bpe)")
    t.add_argument("--vocab-size", type=T.positive_int, default=None, help="bpe only: vocabulary size, at least 257 (default: 8000)")
    t.add_argument("--min-freq", type=T.positive_int, default=None,
                   help="bpe: least count of a pair to merge (default 2); char/word: least count to be in the vocabulary (default 1)")
    t.add_argument("--no-eot", action="store_true", help="char/word: no <|endoftext|> id (documents cannot be separated)")
    t.add_argument("--out", required=True, help="directory to write the tokenizer to")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:

    from gpt2kit.errors import GPT2KitError
    from gpt2kit.tokenization import build_tokenizer, train_bpe
    from gpt2kit.tokenization.corpus import read_text_files

    if args.kind == "bpe" and args.no_eot:
        raise GPT2KitError("--no-eot is for char/word; a bpe tokenizer always has <|endoftext|>")
    if args.kind != "bpe" and args.vocab_size is not None:
        raise GPT2KitError(f"--vocab-size is for bpe; a {args.kind} vocabulary is every {args.kind} seen --min-freq times")
    check_out_dir(args.out)
    with write_errors(args.out):  # a full or read-only disk while writing --out: one line
        if args.kind == "bpe":
            tok = train_bpe(args.files, args.vocab_size or 8000, args.out, min_frequency=args.min_freq or 2)
        else:
            tok = build_tokenizer(args.kind, read_text_files(args.files), min_freq=args.min_freq or 1, eot=not args.no_eot)
            tok.save(args.out)
    extras = ", ".join(f"{name} {i}" for name, i in (("eot", tok.eot_token), ("unk", tok.unk_token)) if i is not None)
    print(f"{tok.kind} tokenizer, {tok.n_vocab} tokens ({extras}) -> {args.out}")
    return 0
