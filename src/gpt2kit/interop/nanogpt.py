"""nanoGPT checkpoints (out-*/ckpt.pt): {'model': state_dict, 'model_args': {...}, ...}.

nanoGPT's module names are gpt2kit's, so the state dict maps as is once torch.compile's
`_orig_mod.` prefix is stripped and the causal-mask buffers (`attn.bias`, present when
flash attention was off) are dropped. The file is read with torch.load(weights_only=True),
which refuses to build arbitrary Python objects.

A char-level run keeps its vocabulary in meta.pkl beside the data ({'stoi', 'itos',
'vocab_size'}). That file is a plain pickle, and unpickling runs whatever code the file
names, so it is read only when the user passes --trust-pickle (trust_pickle=True); even then
the unpickler refuses every global, so only dicts, lists, strings and numbers load.
"""
from __future__ import annotations

import io
import os
import pickle

import torch

from ..config import GPTConfig
from ..errors import GPT2KitError

ORIG_MOD = "_orig_mod."


def read_ckpt(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GPT2KitError(f"nanoGPT checkpoint not found: {path}") from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GPT2KitError(f"cannot read nanoGPT checkpoint {path}: {msg[:200]}; the file is truncated, corrupt, or not a torch checkpoint") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("model_args"), dict):
        raise GPT2KitError(f"{path} is a torch file but not a nanoGPT checkpoint (expected a dict with 'model' and 'model_args')")
    return ckpt


def config_from_model_args(args: dict, source: str) -> GPTConfig:
    """nanoGPT's model_args (n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout) -> GPTConfig.

    nanoGPT pads GPT-2's vocabulary to 50304 for speed; those rows were never targets,
    so gpt2kit keeps vocab_size 50257 and pads the table to a multiple of 64 (same rows).
    """
    try:
        V = args["vocab_size"]
        cfg = dict(block_size=args["block_size"], vocab_size=V, n_layer=args["n_layer"], n_head=args["n_head"],
                   n_embd=args["n_embd"], bias=bool(args.get("bias", True)))
    except KeyError as e:
        raise GPT2KitError(f"{source}: model_args lacks {e.args[0]!r}") from None
    if V == 50304:
        cfg.update(vocab_size=50257, pad_vocab_multiple=64)
    return GPTConfig(**cfg)


def state_dict_from_ckpt(ckpt: dict) -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in ckpt["model"].items():
        k = k.removeprefix(ORIG_MOD)
        if k == "lm_head.weight" or k.endswith(".attn.bias") and v.dim() == 4:  # tied head; causal-mask buffer
            continue
        sd[k] = v.float() if v.is_floating_point() else v
    return sd


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}; only plain dicts, lists, strings and numbers are allowed")


def read_meta_pkl(path: str, trust_pickle: bool):
    """The CharTokenizer stored in nanoGPT's meta.pkl (needs trust_pickle=True)."""
    from ..tokenization.char import CharTokenizer

    if not trust_pickle:
        raise GPT2KitError(
            f"{path} holds the char vocabulary as a pickle, and unpickling a file can run arbitrary code; "
            "if you trust where it came from, pass trust_pickle=True to read it"
        )
    try:
        with open(path, "rb") as f:
            meta = _NoGlobals(io.BytesIO(f.read())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
        raise GPT2KitError(f"cannot read {path}: {e}; the file is truncated or corrupt") from None
    try:
        itos = meta["itos"]
        chars = [itos[i] for i in range(len(itos))]
    except (KeyError, TypeError):
        raise GPT2KitError(f"{path} is not a nanoGPT char meta.pkl (expected 'itos' mapping ids 0..n-1 to characters)") from None
    return CharTokenizer(chars, unk=False)  # nanoGPT's char vocab has no unknown token


def find_meta(ckpt_path: str, ckpt: dict) -> str | None:
    """meta.pkl beside the checkpoint, or in data/<dataset>/ as nanoGPT's sample.py looks for it."""
    here = os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), "meta.pkl")
    if os.path.exists(here):
        return here
    dataset = (ckpt.get("config") or {}).get("dataset") if isinstance(ckpt.get("config"), dict) else None
    if dataset:
        there = os.path.join("data", dataset, "meta.pkl")
        if os.path.exists(there):
            return there
    return None


def load_nanogpt(path: str, trust_pickle: bool = False):
    """(GPT, tokenizer or None, meta dict) from a nanoGPT ckpt.pt (or a folder holding one)."""
    from ..tokenization.gpt2 import GPT2Tokenizer
    from ..weights import build_model

    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    ckpt = read_ckpt(path)
    cfg = config_from_model_args(ckpt["model_args"], path)
    model = build_model(cfg, state_dict_from_ckpt(ckpt), source=path)
    meta_path = find_meta(path, ckpt)
    if meta_path is not None:
        tok = read_meta_pkl(meta_path, trust_pickle)
        if tok.n_vocab != cfg.vocab_size:
            raise GPT2KitError(f"{meta_path} has {tok.n_vocab} characters but the model's vocab_size is {cfg.vocab_size}; is it from the same dataset?")
    else:
        tok = GPT2Tokenizer() if cfg.vocab_size == 50257 else None
    info = {k: ckpt[k] for k in ("iter_num",) if isinstance(ckpt.get(k), int)}
    if "best_val_loss" in ckpt:
        info["best_val_loss"] = float(ckpt["best_val_loss"])
    return model, tok, info
