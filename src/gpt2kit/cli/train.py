"""`gpt2kit train`: train from scratch, finetune, or resume. Every TrainConfig field is a flag."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    from gpt2kit.train_config import FIELDS

    p = sub.add_parser("train", help="train or finetune a GPT (resumable; DDP or FSDP under torchrun)",
                       description="Train a GPT. Values come from the field defaults, then --preset, then --config, "
                                   "then flags. Under torchrun it trains with DDP, or with --strategy fsdp sharded (FSDP2); gloo on CPU, nccl on CUDA.")
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
    import math
    import os

    from gpt2kit.errors import GPT2KitError
    from gpt2kit.train_config import FIELDS, make_config

    overrides = {k: getattr(args, k) for k in FIELDS if getattr(args, k) is not None}
    if args.resume and (args.preset or args.config):
        raise GPT2KitError("--resume continues with the run's own config; drop --preset/--config and pass flags to override it")
    cfg = None if args.resume else make_config(args.preset, args.config, overrides)  # checked before torch loads
    from gpt2kit.train import resume, train

    result = resume(args.resume, **overrides) if args.resume else train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        val = "no eval this session" if math.isnan(result.final_val_loss) else f"val loss {result.final_val_loss:.4f}"
        print(f"done: {result.iters} iters in {result.elapsed_s:.1f}s ({result.tokens_per_s:,.0f} tokens/s); "
              f"{val} (best {result.best_val_loss:.4f}); checkpoint in {result.out}")
    return 0
