"""Export to a Hugging Face GPT-2 folder that transformers.AutoModelForCausalLM loads.

Writes config.json (GPTConfig.to_hf), model.safetensors (weights.to_hf_state_dict: HF key
names, Conv1D layout, tied head stored once), and the tokenizer: GPT-2's vocab.json /
merges.txt (OpenAI's encoder.json / vocab.bpe under HF's names) when the model uses GPT-2's
BPE, with its chat template (if one is stored) in tokenizer_config.json. Other tokenizers
(char, ...) have no HF GPT-2 form; their gpt2kit files go to tokenizer/, so gpt2kit reads the
folder back with the same tokenizer.
"""
from __future__ import annotations

import os
import shutil

from ..fileio import atomic_dir, atomic_path, write_json_atomic


# everything an export may write: a re-export replaces all of it (a stale vocab.json must not outlive a tokenizer change)
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
            "tokenizer_config.json", "tokenizer")


def export_hf(model, tokenizer, out_dir: str) -> None:
    """Write the folder in a temp sibling and swap it in whole (fileio.atomic_dir)."""
    from safetensors.torch import save_file

    from ..weights import to_hf_state_dict
    from .common import add_zero_biases

    model = getattr(model, "_orig_mod", model)
    sd = add_zero_biases(to_hf_state_dict(model), model.config)  # HF's GPT-2 always has biases
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    cfg = model.config.to_hf()
    with atomic_dir(out_dir, owns=HF_FILES) as tmp:
        with atomic_path(os.path.join(tmp, "model.safetensors")) as f:
            save_file(sd, f, metadata={"format": "pt"})
        if tokenizer is not None and tokenizer.kind == "gpt2":
            _write_gpt2_tokenizer(tmp, model.config.block_size, tokenizer.chat_template)
        else:
            eot = tokenizer.eot_token if tokenizer is not None else None
            cfg["bos_token_id"] = cfg["eos_token_id"] = eot  # 50256 means nothing in another vocabulary
            if tokenizer is not None:
                tokenizer.save(os.path.join(tmp, "tokenizer"))
        write_json_atomic(os.path.join(tmp, "generation_config.json"),
                          {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]})
        write_json_atomic(os.path.join(tmp, "config.json"), cfg)


def _write_gpt2_tokenizer(out_dir: str, n_ctx: int, chat_template: str | None = None) -> None:
    from ..tokenization.gpt2 import ENDOFTEXT, vocab_files

    enc, bpe = vocab_files()
    for src, name in ((enc, "vocab.json"), (bpe, "merges.txt")):
        with atomic_path(os.path.join(out_dir, name)) as tmp:
            shutil.copyfile(src, tmp)
    write_json_atomic(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": n_ctx, "add_prefix_space": False,
        "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT,
        **({"chat_template": chat_template} if chat_template is not None else {}),  # where transformers reads it
    })
