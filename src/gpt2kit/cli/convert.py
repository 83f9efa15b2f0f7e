"""`gpt2kit convert SRC --out DIR`: read another tool's model and write a gpt2kit checkpoint."""
from __future__ import annotations


def register(sub) -> None:
    from gpt2kit.interop import FORMATS

    p = sub.add_parser("convert", help="convert OpenAI TF, nanoGPT, llm.c or HF weights into a gpt2kit checkpoint",
                       description="Read OpenAI's download folder (model.ckpt.* + hparams.json; no TensorFlow needed), "
                                   "a nanoGPT ckpt.pt, an llm.c model .bin or an HF GPT-2 folder, and write a gpt2kit checkpoint directory.")
    p.add_argument("src", help="source: a folder or file; the format is detected")
    p.add_argument("--out", required=True, help="gpt2kit checkpoint directory to write")
    p.add_argument("--from", dest="fmt", choices=FORMATS, default=None, help="source format, when detection is not wanted")
    p.add_argument("--tokenizer", default=None, help="tokenizer to save with the model when the source carries none (or to replace it)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read nanoGPT's meta.pkl (a pickle: unpickling can run code, so only for files you trust)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    import sys

    from gpt2kit.interop import load_any
    from gpt2kit.weights import save_model

    model, tok, info = load_any(args.src, trust_pickle=args.trust_pickle, fmt=args.fmt)
    if args.tokenizer:
        from gpt2kit.loading import check_vocab
        from gpt2kit.tokenization import get_tokenizer

        tok = get_tokenizer(args.tokenizer)
        check_vocab(tok, model.config.vocab_size)
    save_model(model, args.out, tokenizer=tok, meta={"converted_from": info})
    c = model.config
    print(f"{info['source_format']} -> {args.out}: {c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, "
          f"context {c.block_size}, vocab {c.vocab_size}, tokenizer {tok.kind if tok else 'none'}")
    if tok is None:
        print(f"note: {args.src} carries no tokenizer gpt2kit recognizes; pass --tokenizer when using {args.out}", file=sys.stderr)
    return 0
