"""GGUF export for llama.cpp: the GPT-2 architecture as llama.cpp's convert_hf_to_gguf.py writes it.

Metadata: general.architecture "gpt2", gpt2.context_length / embedding_length /
feed_forward_length (4 * n_embd) / block_count / attention.head_count /
attention.layer_norm_epsilon, general.file_type. Tensors (numpy shapes; GGUF stores the
dims reversed): token_embd (V, C), position_embd (T, C), blk.N.attn_norm, attn_qkv (3C, C),
attn_output (C, C), ffn_norm, ffn_up (4C, C), ffn_down (C, 4C), output_norm, and output
(V, C), a copy of token_embd because GPT-2 ties them (the converter writes it too).
The weights are in nn.Linear's (out, in) layout, which is what the converter gets after
transposing HF's Conv1D.

Tokenizer: tokenizer.ggml.model "gpt2" (byte-level BPE), pre "gpt-2", tokens in
OpenAI's byte-to-unicode spelling, token_type (1 normal, 3 control), merges, bos/eos ids.
A char tokenizer is written in the same byte-level form: each character is a token, and
multi-byte characters get the merges that rebuild them from their bytes.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import GPT2KitError
from ..fileio import atomic_path
from ..loading import check_vocab

TOKEN_NORMAL, TOKEN_CONTROL = 1, 3
DTYPES = {"f32": np.float32, "float32": np.float32, "f16": np.float16, "float16": np.float16}
# A merge llama.cpp can never apply: its pieces lie outside the 256 byte-level characters
# that pre-tokenized text consists of. Written only when a vocabulary needs no merge at all,
# because llama.cpp requires the merges key and gguf cannot write an empty array.
INERT_MERGE = "\u4e00 \u4e01"

LAYER_TENSORS = [  # (GGUF name in block N, gpt2kit name in block N)
    ("attn_norm.weight", "ln_1.weight"), ("attn_norm.bias", "ln_1.bias"),
    ("attn_qkv.weight", "attn.c_attn.weight"), ("attn_qkv.bias", "attn.c_attn.bias"),
    ("attn_output.weight", "attn.c_proj.weight"), ("attn_output.bias", "attn.c_proj.bias"),
    ("ffn_norm.weight", "ln_2.weight"), ("ffn_norm.bias", "ln_2.bias"),
    ("ffn_up.weight", "mlp.c_fc.weight"), ("ffn_up.bias", "mlp.c_fc.bias"),
    ("ffn_down.weight", "mlp.c_proj.weight"), ("ffn_down.bias", "mlp.c_proj.bias"),
]


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array, in the order the converter writes them."""
    from .common import plain_state_dict

    sd = {k: v.float().numpy() for k, v in plain_state_dict(model).items()}
    out = {"token_embd.weight": sd["transformer.wte.weight"], "position_embd.weight": sd["transformer.wpe.weight"]}
    for i in range(model.config.n_layer):
        for g, k in LAYER_TENSORS:
            out[f"blk.{i}.{g}"] = sd[f"transformer.h.{i}.{k}"]
    out["output_norm.weight"] = sd["transformer.ln_f.weight"]
    out["output_norm.bias"] = sd["transformer.ln_f.bias"]
    out["output.weight"] = sd["transformer.wte.weight"]  # tied in GPT-2; llama.cpp reads `output`
    return out


def gguf_vocab(tokenizer) -> dict:
    """tokens, token_type, merges, and special ids for tokenizer.ggml.*"""
    from ..tokenization.gpt2 import ENDOFTEXT, bytes_to_unicode, load_encoder

    if tokenizer.kind == "gpt2":
        encoder, merges = load_encoder()
        tokens = sorted(encoder, key=encoder.get)
        types = [TOKEN_CONTROL if t == ENDOFTEXT else TOKEN_NORMAL for t in tokens]
        eot = encoder[ENDOFTEXT]
        return {"tokens": tokens, "types": types, "merges": [f"{a} {b}" for a, b in merges], "bos": eot, "eos": eot}
    b2u = bytes_to_unicode()
    ids: dict[str, int] = {}
    merges: dict[str, None] = {}  # ordered set
    for i in range(tokenizer.n_vocab):
        t = "".join(b2u[b] for b in tokenizer.token_bytes(i))
        if t in ids:
            raise GPT2KitError(f"tokens {ids[t]} and {i} spell the same bytes; GGUF needs distinct tokens")
        ids[t] = i
        for j in range(2, len(t) + 1):  # rebuild a multi-byte character one byte at a time
            merges[f"{t[: j - 1]} {t[j - 1]}"] = None
    tokens, merges = list(ids), list(merges)
    eot = tokenizer.eot_token
    return {"tokens": tokens, "types": [TOKEN_NORMAL] * len(tokens), "merges": merges or [INERT_MERGE],
            "bos": eot, "eos": eot}


def export_gguf(model, tokenizer, path: str, dtype: str = "f32", name: str | None = None) -> None:
    """Write `path` (atomically) as a GGUF file llama.cpp loads as GPT-2."""
    import gguf

    if tokenizer is None:
        raise GPT2KitError("GGUF files carry their tokenizer and this model has none saved; pass tokenizer=SPEC")
    if dtype not in DTYPES:
        raise GPT2KitError(f"GGUF export dtype must be f32 or f16, not {dtype!r}")
    cfg = model.config
    check_vocab(tokenizer, cfg.vocab_size)
    vocab = gguf_vocab(tokenizer)
    f16 = DTYPES[dtype] == np.float16
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, "gpt2")
        w.add_name(name or os.path.splitext(os.path.basename(path))[0])
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        if vocab["bos"] is not None:
            w.add_bos_token_id(vocab["bos"])
            w.add_eos_token_id(vocab["eos"])
        w.add_add_bos_token(False)  # GPT-2 prompts start with their first token, no BOS
        for tname, arr in gguf_tensors(model).items():
            # as the converter does for f16: 2-D weights in f16, norms and biases stay f32
            w.add_tensor(tname, arr.astype(np.float16) if f16 and arr.ndim == 2 else arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
