"""What several verbs share: the model and sampling flags, loading from them, output-path checks,
and the mapping from the Python parameters that library errors name to the flags the CLI has."""
from __future__ import annotations

import argparse
import os
import re

from ..fileio import check_writable
from . import types as T

# Library messages name parameters (`dtype='bfloat16'`); printed by the CLI they name flags.
PARAM_FLAGS = {
    "tokenizer": "--tokenizer", "dtype": "--dtype", "device": "--device", "backend": "--backend",
    "strategy": "--strategy",
    "allowed_special": "--allow-special", "trust_pickle": "--trust-pickle", "data": "--data",
    "digits": "--digits", "field": "--field", "block_size": "--block-size", "max_new_tokens": "--max-new-tokens",
    "tensorboard": "--tensorboard", "adapter": "--adapter",
}
SWITCHES = {"allowed_special", "trust_pickle", "tensorboard"}  # store_true flags: the parameter's value is not shown
_PARAM = re.compile(r"\b(" + "|".join(PARAM_FLAGS) + r")=(\{[^}]*\}|'[^']*'|\"[^\"]*\"|[^\s,;)/]*)")


def cli_message(message: str) -> str:
    """A library error as the CLI says it: `dtype='bfloat16'` -> `--dtype bfloat16`, `digits=` -> `--digits`.

    Library messages mark a parameter as `name=` (with or without a value); only names in PARAM_FLAGS change."""
    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2).strip("'\"")
        return PARAM_FLAGS[name] if name in SWITCHES or not value else f"{PARAM_FLAGS[name]} {value}"

    return _PARAM.sub(flag, message)


def add_model_args(p: argparse.ArgumentParser, backend: bool = False) -> None:
    p.add_argument("--model", default="gpt2", help="hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), HF-format dir or gpt2kit checkpoint dir (default: gpt2)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec; default: the one saved with the model (GPT-2 BPE for hub/HF models)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "int8", "int4"],
                   help="weights: float32 (default), bfloat16, float16, int8 or int4 (quantized weights, CPU only: fastest decode)")
    add_adapter_arg(p)
    if backend:
        p.add_argument("--backend", default="torch", choices=["torch", "numpy"], help="torch (default) or numpy: pure NumPy GPT-2, float32 on the CPU, no torch imported")


def add_adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter (a LoRA training run's dir, or peft's save_pretrained dir), merged into the model as it loads")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=T.max_new_tokens, default=100, help=f"tokens to generate per sample, at most {T.MAX_NEW_TOKENS:,} (default: 100)")
    p.add_argument("--temperature", type=T.temperature, default=1.0, help="softmax temperature; 0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=T.top_k, default=40, help="keep the k most likely tokens; 'none' = all (default: 40)")
    p.add_argument("--top-p", type=T.top_p, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off (default: 1.0)")
    p.add_argument("--repetition-penalty", type=T.positive_float, default=1.0, help="CTRL-style penalty on seen tokens; 1 = off")
    p.add_argument("--seed", type=T.seed, default=None, help="random seed in [0, 2**64); the same seed gives the same samples")
    p.add_argument("--num-samples", type=T.positive_int, default=1, help="independent samples to draw (default: 1)")
    p.add_argument("--stop", type=T.stop_string, action="append", default=[], help="stop at this string (repeatable)")
    p.add_argument("--allow-special", action="store_true", help="let '<|endoftext|>' in the prompt be the special token")


def load_model_args(args):
    """(model, tokenizer) for the flags of add_model_args."""
    from gpt2kit.loading import load

    return load(args.model, args.tokenizer, dtype=args.dtype, device=args.device, backend=getattr(args, "backend", "torch"),
                adapter=args.adapter, inference=True)


def check_out_file(path: str) -> None:
    """Refuse an --out file that cannot be written, before any work is done."""
    from gpt2kit.errors import GPT2KitError

    if os.path.isdir(path):
        raise GPT2KitError(f"--out {path} is a directory; give a file path, e.g. --out {os.path.join(path, 'result.json')}")
    check_writable(os.path.dirname(os.path.abspath(path)))


def check_out_dir(path: str) -> None:
    """Refuse an --out directory that cannot be created or written, before any work is done."""
    from gpt2kit.errors import GPT2KitError

    if os.path.exists(path) and not os.path.isdir(path):
        raise GPT2KitError(f"--out {path} is a file; give a directory")
    check_writable(path)
