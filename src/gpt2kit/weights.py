"""Loading and saving weights in torch: HF GPT-2 directories, the HF hub cache, and gpt2kit checkpoints.

The format itself (files, key names, which HF weights are transposed, config checks) lives in
the torch-free checkpoint.py. Loading is a shape-checked key copy: HF's Conv1D matrices
(in, out) are transposed into nn.Linear's (out, in); everything else is copied as is.
"""
from __future__ import annotations

import math
import os

import torch

from . import checkpoint
from .checkpoint import FORMAT_VERSION, TRANSPOSED, WEIGHTS_FILE, ModelDir, gpt2kit_key, read_model_dir
from .config import GPTConfig
from .errors import GPT2KitError
from .fileio import atomic_dir, atomic_path, write_json_atomic
from .hub import HUB_FILES, download, hub_repo, resolve_model_path  # noqa: F401  (re-exported; torch-free home)
from .model import GPT


# -- state-dict mapping ---------------------------------------------------------------------

def from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT2LMHeadModel / GPT2Model keys -> gpt2kit keys, Conv1D weights transposed.

    Consumes `sd` (entries are popped) so each source tensor is freed once its copy exists:
    peak memory stays near one model's worth of weights.
    """
    out = {}
    for k in list(sd):
        v = sd.pop(k)
        name = gpt2kit_key(k)
        if name is None:
            continue
        if name.endswith(TRANSPOSED):
            v = v.t()  # a view: build_model lays it out (HF's (in, out) storage is already the column-major layout)
        out[name] = v
    return out


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """gpt2kit -> HF GPT2LMHeadModel keys (padding rows dropped, Conv1D layout)."""
    V = model.config.vocab_size
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        if k == "transformer.wte.weight":
            v = v[:V]
        if k.endswith(TRANSPOSED):
            v = v.t()
        out[k] = v.detach().contiguous()
    return out


def _skeleton(config: GPTConfig) -> GPT:
    """A GPT with its parameters on the meta device. Their random init is skipped: on meta tensors
    normal_ runs torch's Python reference kernel, whose first use imports torch._dynamo (2-15 s in
    every CLI command) for values load_state_dict replaces anyway. The stand-in passes other tensors
    to the real normal_, so a model another thread builds meanwhile is initialised as usual."""
    normal_ = torch.nn.init.normal_
    torch.nn.init.normal_ = lambda t, *a, **k: t if t.is_meta else normal_(t, *a, **k)
    try:
        with torch.device("meta"):
            return GPT(config)
    finally:
        torch.nn.init.normal_ = normal_


def build_model(config: GPTConfig, sd: dict[str, torch.Tensor], source: str = "checkpoint",
                column_major: bool | tuple[str, ...] = False) -> GPT:
    """A GPT whose parameters are exactly `sd` (gpt2kit keys), with every shape checked.

    column_major stores each matmul weight (in, out) in memory, same shape and values:
    F.linear(x, W) multiplies by W^T, and when W^T is the contiguous tensor MKL takes its
    non-transposed kernels, which decode faster here (the 50257-row head: 4.4 -> 3.5 ms at
    batch 1, 16 -> 8 ms at batch 8). load_model uses it; training builds row-major models.
    A tuple of keys lays out only those (the rest row-major), for weights that are repacked or cast anyway.
    """
    model = _skeleton(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ints = [k for k, v in sd.items() if not v.is_floating_point()]
    if ints:
        raise GPT2KitError(f"{source}: weight {ints[0]} is stored as {sd[ints[0]].dtype}, not a float type; re-save the model with float weights")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise GPT2KitError(f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}); is the config.json from the same model?")
    for k in list(sd):  # in place, one tensor at a time, so each original is freed after its copy (none when already laid out)
        col = k in column_major if isinstance(column_major, tuple) else column_major
        if col and k.endswith(".weight") and sd[k].dim() == 2 and k != "transformer.wpe.weight":
            sd[k] = sd[k] if sd[k].t().is_contiguous() else sd[k].t().contiguous().t()
        else:
            sd[k] = sd[k].contiguous()
    V, Vp = config.vocab_size, config.padded_vocab_size
    wte = sd["transformer.wte.weight"]
    if wte.shape[0] == V and Vp != V:  # pad rows for speed; they are sliced off the logits
        col = "transformer.wte.weight" in column_major if isinstance(column_major, tuple) else column_major
        wte = torch.cat([wte, wte.new_zeros(Vp - V, wte.shape[1])])
        if col:
            wte = wte.t().contiguous().t()
    sd = {**sd, "transformer.wte.weight": wte}
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise GPT2KitError(f"{source}: {k} has shape {tuple(sd[k].shape)} but the config needs {tuple(shape)}")
    model.load_state_dict({**sd, "lm_head.weight": sd["transformer.wte.weight"]}, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie: assign=True replaced the Parameter
    return model.eval()


# -- files ----------------------------------------------------------------------------------

def read_safetensors(path: str, column_major: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, each read once into its own memory; the 2-D ones named in column_major are
    read in row chunks straight into column-major storage, so no full-size transposed copy is ever made."""
    if not column_major:
        return checkpoint.read_safetensors(path, "torch")
    checkpoint.check_float_weights(path, "torch")
    header = checkpoint.read_header(path)
    with open(path, "rb", buffering=0) as f:
        base = 8 + int.from_bytes(f.read(8), "little")
        return {name: _read_tensor(f, path, base, info, name in column_major) for name, info in header.items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _read_tensor(f, path: str, base: int, info: dict, column_major: bool) -> torch.Tensor:
    dtype, shape = _SAFETENSORS_DTYPES[info["dtype"]], list(info["shape"])
    a, b = info["data_offsets"]
    if b - a != math.prod(shape) * dtype.itemsize:
        raise GPT2KitError(f"cannot read {path}: a tensor's byte range does not match its shape; the file is corrupt, re-save it")
    if not (column_major and len(shape) == 2):
        return _pread_into(f, path, base + a, torch.empty(shape, dtype=dtype))
    out = torch.empty(shape[::-1], dtype=dtype).t()  # (rows, cols) over column-major storage
    row_bytes = shape[1] * dtype.itemsize
    # chunks under glibc's mmap threshold (128 KiB): larger freed buffers raise it, and later weights then land
    # in the heap, where memory freed after prepacking stays resident
    step = max(1, (64 << 10) // max(1, row_bytes))
    for r in range(0, shape[0], step):
        out[r : r + step] = _pread_into(f, path, base + a + r * row_bytes, torch.empty(min(step, shape[0] - r), shape[1], dtype=dtype))
    return out


def _pread_into(f, path: str, offset: int, t: torch.Tensor) -> torch.Tensor:
    """Fill the contiguous tensor t with the file's bytes at offset."""
    if t.numel() and os.preadv(f.fileno(), [t.view(torch.uint8).numpy().reshape(-1)], offset) != t.numel() * t.element_size():
        raise GPT2KitError(f"cannot read {path}: the file is truncated; re-download or re-save it")
    return t


def read_torch_bin(path: str) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GPT2KitError(f"cannot read {path}: {msg}; the file is truncated, corrupt or not a plain state dict") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise GPT2KitError(f"{path} is not a plain state dict (name -> tensor); re-save it with torch.save(model.state_dict(), path)")
    return sd


def load_dir(d: ModelDir, column_major: bool | tuple[str, ...] = True) -> GPT:
    """Build the model of a checked model directory (gpt2kit checkpoint or HF GPT-2 folder)."""
    if not d.hf:
        cols = column_major if isinstance(column_major, tuple) else ()
        return build_model(d.config, read_safetensors(d.weights, cols), source=d.path, column_major=column_major)
    binf = os.path.join(d.path, "pytorch_model.bin")
    if os.path.exists(d.weights):
        sd = read_safetensors(d.weights)
    elif os.path.exists(binf):
        sd = read_torch_bin(binf)
    else:
        raise GPT2KitError(f"no weights in {d.path}: expected {WEIGHTS_FILE} or pytorch_model.bin")
    return build_model(d.config, from_hf_state_dict(sd), source=d.path, column_major=column_major)


def save_model(model: GPT, directory: str | os.PathLike, tokenizer=None, meta: dict | None = None) -> None:
    """Write a gpt2kit checkpoint directory, swapped in as a whole (fileio.atomic_dir): a failed
    or killed save leaves the previous checkpoint complete. Other entries of `directory` (a run's
    state/, logs) are kept."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper: save the plain module's keys
    model = getattr(model, "module", model)  # DDP wrapper
    if getattr(model, "quantized", None) or getattr(model, "prepacked", False):
        raise GPT2KitError("this model's weights are laid out for inference (quantized or prepacked) and cannot be saved; "
                           "load it with load_model(path) (no dtype=int8/int4, inference=False) to save or train it")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with atomic_dir(directory) as tmp:
        with atomic_path(os.path.join(tmp, "model.safetensors")) as f:
            save_file(sd, f, metadata={"format": "pt", "gpt2kit_version": str(FORMAT_VERSION)})
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer"))
        if meta is not None:
            write_json_atomic(os.path.join(tmp, "meta.json"), meta)
        write_json_atomic(os.path.join(tmp, "config.json"), {"gpt2kit_version": FORMAT_VERSION, "model": model.config.to_dict()})


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


QUANTIZED = ("int8", "int4")  # CPU inference only


def load_model(name_or_path: str | os.PathLike = "gpt2", *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               adapter=None, inference: bool = False) -> GPT:
    """GPT-2 from a hub name, an HF-format directory, or a gpt2kit checkpoint directory.

    dtype: float32 (default), bfloat16, float16, or "int8" / "int4" (quantized weights, CPU inference only).
    adapter: a LoRA adapter dir (or a lora.Adapter), merged into the float32 weights before the cast.
    inference: lay the weights out for the fastest CPU kernels (for_inference); the model then
    generates, serves and scores, but does not train or save.
    """
    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str) and dtype not in DTYPES and dtype not in QUANTIZED:
        raise GPT2KitError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16, int8 or int4")
    if dtype in QUANTIZED and torch.device(device).type != "cpu":
        raise GPT2KitError(f"{dtype} weights run on the CPU only; use dtype='bfloat16' on a GPU")
    if adapter is not None and not hasattr(adapter, "layers"):
        from .lora import read_adapter

        adapter = read_adapter(adapter)  # before the base loads: a bad adapter fails fast
    model = load_dir(read_model_dir(path), column_major=_layout_for(dtype, inference))
    if adapter is not None:
        from .lora import merge_adapter

        merge_adapter(model, adapter)
    model = to_dtype(model, dtype).to(device)
    return for_inference(model) if inference else model


def _layout_for(dtype, inference: bool) -> bool | tuple[str, ...]:
    """Which weights to lay out column-major while loading: those fp32 F.linear reads (not the ones prepacked,
    quantized or cast afterwards, whose copy would be wasted memory and time)."""
    if dtype not in (None, "float32", "fp32", torch.float32):
        return False
    if not inference:
        return True
    from .inference import native
    from .inference.prepack import prepack_supported

    if native.available():
        return False  # the C decode step reads row-major weights (torch's kernels take them too, for prompts)

    return ("transformer.wte.weight",) if prepack_supported() else True  # blocks are prepacked; the tied head stays F.linear


def to_dtype(model: GPT, dtype: torch.dtype | str | None) -> GPT:
    """Cast a loaded model for inference: float32 (None), bfloat16, float16, or "int8" / "int4" (CPU)."""
    if dtype is None or dtype in ("float32", "fp32", torch.float32):
        return model
    if dtype == "int8":
        from .quantize import quantize_int8

        return quantize_int8(model)
    if dtype == "int4":
        from .quantize import quantize_int4

        return quantize_int4(model)
    model = model.to(DTYPES[dtype] if isinstance(dtype, str) else dtype)
    for p in model.parameters():  # half-precision GEMV is faster row-major here (column-major helps fp32 only)
        p.data = p.data.contiguous()
    return model


def for_inference(model: GPT) -> GPT:
    """Float weights on the CPU reordered for oneDNN (inference/prepack.py), in place: fp32 keeps the head tied to
    the embedding (no second copy of the largest matrix), bf16 packs it too. Quantized and GPU models are left as they
    are, and so is every model where the C decode step (inference/native.py) is built: it reads the plain weights."""
    from .inference import native

    dtype = model.transformer.wte.weight.dtype
    if getattr(model, "quantized", None) or model.transformer.wte.weight.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return model
    if native.available():
        return model
    from .inference.prepack import prepack

    return prepack(model, head=dtype == torch.bfloat16)
