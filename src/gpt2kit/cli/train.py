"""`gpt2kit train`: train from scratch, finetune, or resume. Every TrainConfig field is a flag."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    from gpt2kit.train_config import FIELDS

    p = sub.add_parser("train", help="train or finetune a GPT (resumable; DDP under torchrun)",
                       description="Train a GPT. Values come from the field defaults, then --preset, then --config, "
                                   "then flags. Under torchrun it trains with DDP (gloo on CPU, nccl on CUDA).")
    p.add_argument("--preset", default=None, help="a preset shipped with gpt2kit (quickstart, shakespeare-char, shakespeare-char-gpu, finetune-shakespeare, gpt2-124M, ...)")
    p.add_argument("--config", default=None, help="a TOML or JSON file of config fields")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest state (flags override its config)")
    g = p.add_argument_group("config fields")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = f.default
        if f.type == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
        else:
            g.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], default=None, help=f"(default: {default})")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import os

    from gpt2kit.errors import GPT2KitError
    from gpt2kit.fileio import read_json
    from gpt2kit.train import train
    from gpt2kit.train_config import FIELDS, TrainConfig, make_config

    overrides = {k: getattr(args, k) for k in FIELDS if getattr(args, k) is not None}
    if args.resume:
        saved = os.path.join(args.resume, "train_config.json")
        if not os.path.exists(saved):
            raise GPT2KitError(f"nothing to resume in {args.resume}: no train_config.json (is it a gpt2kit run dir?)")
        cfg = TrainConfig(**{**read_json(saved, "train config"), **overrides, "out": args.resume})
    else:
        cfg = make_config(args.preset, args.config, overrides)
    result = train(cfg, resume=bool(args.resume))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"done: {result.iters} iters in {result.elapsed_s:.1f}s ({result.tokens_per_s:,.0f} tokens/s); "
          f"val loss {result.final_val_loss:.4f} (best {result.best_val_loss:.4f}); checkpoint in {cfg.out}")
    if cfg.samples and os.path.exists(os.path.join(cfg.out, "config.json")):
        print_samples(cfg)
    return 0


def print_samples(cfg) -> None:
    import torch

    from gpt2kit.generation import generate_text
    from gpt2kit.tokenization import load_tokenizer
    from gpt2kit.weights import load_model

    model, tok = load_model(cfg.out), load_tokenizer(cfg.out)
    prompt = cfg.sample_prompt or ("" if tok.eot_token is not None else "\n")
    ids = tok.encode(prompt) if prompt else [tok.eot_token]
    g = torch.Generator().manual_seed(cfg.seed)
    for i in range(cfg.samples):
        print(f"---------- sample {i + 1} ----------")
        print(prompt + "".join(generate_text(model, tok, ids, cfg.sample_tokens, temperature=0.8, top_k=40, generator=g)), flush=True)
