"""llm.c files: model weights (gpt2_124M.bin) and token shards (*.bin), read and written.

Model file: a header of 256 int32 -- [0] magic 20240326, [1] version (3: fp32, 5: bf16),
[2] maxT, [3] V, [4] L, [5] NH, [6] C, [7] Vp (V padded to a multiple of 128) -- then every
parameter in llm.c's order: wte (Vp, C), wpe (maxT, C), then per kind across all layers
ln_1 w, ln_1 b, c_attn w (3C, C), c_attn b, c_proj w, c_proj b, ln_2 w, ln_2 b,
c_fc w (4C, C), c_fc b, mlp c_proj w (C, 4C), mlp c_proj b, and finally ln_f w, ln_f b.
Weights are in nn.Linear's (out, in) layout, as in llm.c's train_gpt2.py.

Token file: 256 int32 -- [0] magic 20240520, [1] version 1, [2] token count -- then the
tokens as uint16 (llm.c's data_common.write_datafile).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..config import GPTConfig
from ..errors import GPT2KitError
from ..fileio import atomic_path

MODEL_MAGIC = 20240326
MODEL_VERSIONS = {3: torch.float32, 5: torch.bfloat16}
TOKENS_MAGIC = 20240520
TOKENS_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VOCAB_PAD = 128  # llm.c pads wte to a multiple of 128 rows at export

PER_LAYER = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
             "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]


def param_shapes(C: int, L: int, maxT: int, Vp: int) -> list[tuple[str, tuple[int, ...]]]:
    """(gpt2kit key, shape) for every tensor in llm.c's file order."""
    per = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
           "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
           "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,)}
    out = [("transformer.wte.weight", (Vp, C)), ("transformer.wpe.weight", (maxT, C))]
    for name in PER_LAYER:  # llm.c groups each kind of tensor across layers
        out += [(f"transformer.h.{i}.{name}", per[name]) for i in range(L)]
    return out + [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]


def _read_header(path: str, magic: int, what: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise GPT2KitError(f"llm.c {what} file not found: {path}") from None
    if len(raw) < HEADER_BYTES:
        raise GPT2KitError(f"{path} is truncated: {len(raw)} bytes, shorter than llm.c's {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != magic:
        other = {MODEL_MAGIC: "an llm.c model file", TOKENS_MAGIC: "an llm.c token file"}.get(int(header[0]))
        hint = f"it is {other}" if other else "wrong magic number"
        raise GPT2KitError(f"{path} is not an llm.c {what} file ({hint}: header starts with {int(header[0])}, expected {magic})")
    return header


def read_model(path: str):
    """(GPT, header dict) from an llm.c model file; fp32 and bf16 files both load as fp32."""
    from ..weights import build_model

    h = _read_header(path, MODEL_MAGIC, "model")
    version, maxT, V, L, NH, C, Vp = (int(x) for x in h[1:8])
    if version not in MODEL_VERSIONS:
        raise GPT2KitError(f"{path}: llm.c model version {version} is not supported (3 = fp32, 5 = bf16); re-export it with llm.c's train_gpt2.py")
    if min(maxT, V, L, NH, C, Vp) < 1 or Vp < V:
        raise GPT2KitError(f"{path}: header has impossible sizes (maxT={maxT}, V={V}, L={L}, NH={NH}, C={C}, Vp={Vp}); the file is corrupt")
    dtype = MODEL_VERSIONS[version]
    shapes = param_shapes(C, L, maxT, Vp)
    n = sum(int(np.prod(s)) for _, s in shapes)
    itemsize = 4 if dtype == torch.float32 else 2
    size = os.path.getsize(path)
    if size != HEADER_BYTES + n * itemsize:
        state = "truncated" if size < HEADER_BYTES + n * itemsize else "longer than its header says"
        raise GPT2KitError(f"{path} is {state}: {size} bytes, but its header (L={L}, C={C}, Vp={Vp}, maxT={maxT}, version {version}) needs {HEADER_BYTES + n * itemsize}")
    flat = np.fromfile(path, dtype="<f4" if itemsize == 4 else "<u2", count=n, offset=HEADER_BYTES)
    flat = torch.from_numpy(flat)
    if dtype == torch.bfloat16:
        flat = flat.view(torch.int16).view(torch.bfloat16).float()
    sd, pos = {}, 0
    for key, shape in shapes:
        k = int(np.prod(shape))
        sd[key] = flat[pos : pos + k].view(shape).clone()
        pos += k
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][:V]  # padded rows are zeros, never targets
    cfg = GPTConfig(block_size=maxT, vocab_size=V, n_layer=L, n_head=NH, n_embd=C)
    return build_model(cfg, sd, source=path), {"version": version, "padded_vocab_size": Vp}


def write_model(model, path: str, dtype: str = "float32") -> None:
    """Write an llm.c model file (version 3 for float32, 5 for bfloat16), atomically."""
    from .common import plain_state_dict

    versions = {"float32": 3, "fp32": 3, "bfloat16": 5, "bf16": 5}
    if dtype not in versions:
        raise GPT2KitError(f"llm.c files hold float32 or bfloat16 weights, not {dtype!r}")
    version = versions[dtype]
    cfg = model.config
    C, L, maxT, V = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.vocab_size
    Vp = (V + VOCAB_PAD - 1) // VOCAB_PAD * VOCAB_PAD
    sd = plain_state_dict(model)  # llm.c's GPT-2 always has biases; zeros are exact for bias=False
    wte = torch.zeros(Vp, C)
    wte[:V] = sd["transformer.wte.weight"]
    sd["transformer.wte.weight"] = wte
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, version, maxT, V, L, cfg.n_head, C, Vp]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        for key, shape in param_shapes(C, L, maxT, Vp):
            t = sd[key].detach().float().cpu().contiguous()
            if tuple(t.shape) != shape:
                raise GPT2KitError(f"{key} has shape {tuple(t.shape)}, expected {shape} for llm.c")
            if version == 3:
                f.write(t.numpy().astype("<f4").tobytes())
            else:
                f.write(t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes())


def read_tokens(path: str) -> np.ndarray:
    """The uint16 tokens of an llm.c token file, header-checked."""
    h = _read_header(path, TOKENS_MAGIC, "token")
    if h[1] != TOKENS_VERSION:
        raise GPT2KitError(f"{path}: llm.c token file version {int(h[1])} is not supported (expected {TOKENS_VERSION}: uint16 GPT-2 tokens)")
    n = int(h[2])
    size = os.path.getsize(path)
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise GPT2KitError(f"{path} is {'truncated' if size < HEADER_BYTES + 2 * n else 'corrupt'}: header says {n} tokens ({HEADER_BYTES + 2 * n} bytes), file has {size} bytes")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


def write_tokens(tokens, path: str) -> None:
    """Write tokens (each < 2**16) as an llm.c token file, atomically."""
    toks = np.asarray(tokens)
    if toks.size and (toks.min() < 0 or toks.max() >= 2**16):
        raise GPT2KitError(f"llm.c token files hold uint16 ids; got ids in {int(toks.min())}..{int(toks.max())}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = [TOKENS_MAGIC, TOKENS_VERSION, toks.size]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())


def sniff(path: str) -> int | None:
    """The llm.c magic number at the start of a file, or None."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4)
    except OSError:
        return None
    if len(raw) < 4:
        return None
    magic = int.from_bytes(raw, "little")
    return magic if magic in (MODEL_MAGIC, TOKENS_MAGIC) else None
