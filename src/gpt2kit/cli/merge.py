"""`gpt2kit merge BASE ADAPTER --out DIR`: fold a LoRA adapter into its base model's weights."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("merge", help="fold a LoRA adapter into its base model: a plain checkpoint",
                       description="Add a LoRA adapter (gpt2kit's or peft's) to the weights of its base model and "
                                   "write a gpt2kit checkpoint that runs without the adapter.")
    p.add_argument("base", help="the base model: gpt2kit checkpoint dir, HF-format dir or hub name (gpt2, ...)")
    p.add_argument("adapter", help="the LoRA adapter dir (a LoRA training run's dir, or peft's save_pretrained dir)")
    p.add_argument("--out", required=True, help="gpt2kit checkpoint directory to write")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec; default: the base model's")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args) -> int:
    import os

    from gpt2kit.loading import load
    from gpt2kit.weights import save_model

    from .common import check_out_dir

    check_out_dir(args.out)
    model, tok = load(args.base, args.tokenizer, adapter=args.adapter, need_tokenizer=False)
    save_model(model, args.out, tokenizer=tok, meta={"merged_from": {"base": args.base, "adapter": os.path.abspath(args.adapter)}})
    print(f"merged {args.adapter} into {args.base} -> {args.out}")
    return 0
