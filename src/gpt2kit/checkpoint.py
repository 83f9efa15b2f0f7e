"""The checkpoint format, torch-free: both loaders (weights.py for torch, numpy_gpt2.py) read through it.

A gpt2kit checkpoint directory holds:

    config.json         {"gpt2kit_version": 1, "model": GPTConfig fields}
    model.safetensors   gpt2kit key names; the tied lm_head is stored once (as wte)
    tokenizer/          the tokenizer's own files (tokenizer.json, ...)
    meta.json           optional free-form metadata (training run, source, ...)

An HF GPT-2 directory (config.json with model_type "gpt2") is read too. HF's GPT-2 uses Conv1D,
which stores matrices (in, out); gpt2kit uses nn.Linear, (out, in): the TRANSPOSED weights differ.
Everything read from disk is checked (types, ranges, weight dtypes from the safetensors header)
before a model is built, so a bad file is one GPT2KitError naming the file and field, never a
traceback or a huge allocation.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass

from .config import GPTConfig
from .errors import GPT2KitError
from .fileio import read_json

FORMAT_VERSION = 1  # the newest format this gpt2kit writes and reads
FORMAT_KEY = "gpt2kit_version"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_IGNORED = (".attn.bias", ".attn.masked_bias", "lm_head.weight")  # causal-mask buffers; the tied head (the dots keep c_attn.bias)
FLOAT_DTYPES = {"torch": ("F16", "BF16", "F32", "F64"), "numpy": ("F16", "F32", "F64")}  # safetensors dtype names
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class ModelDir:
    """A model directory whose config.json has been read and checked."""

    path: str
    config: GPTConfig
    hf: bool  # HF layout: 'transformer.'-prefixed keys, Conv1D (in, out) matrices, mask buffers

    @property
    def weights(self) -> str:
        return os.path.join(self.path, WEIGHTS_FILE)


def read_model_dir(path: str) -> ModelDir:
    """Dispatch on config.json: a gpt2kit checkpoint or an HF GPT-2 folder, its config validated."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(file):
        refuse_adapter_dir(path)
        raise GPT2KitError(f"{path} holds no config.json; is it a model directory (a gpt2kit checkpoint or an HF GPT-2 folder)?")
    meta = read_json(file, "model config")
    if not isinstance(meta, dict):
        raise GPT2KitError(f"{file} must hold a JSON object, not {type(meta).__name__}; restore it or re-save the model")
    hf = FORMAT_KEY not in meta
    if hf and meta.get("model_type") != "gpt2":
        raise GPT2KitError(f"{file} is neither a gpt2kit checkpoint ({FORMAT_KEY!r} key) nor an HF GPT-2 config (model_type 'gpt2')")
    if not hf:
        _check_version(meta[FORMAT_KEY], file)
        if not isinstance(meta.get("model"), dict):
            raise GPT2KitError(f"{file}: 'model' must be an object of model settings (n_layer, n_head, n_embd, ...), "
                               f"got {meta.get('model')!r:.60}; restore it or re-save the model")
    try:
        config = GPTConfig.from_hf(meta) if hf else GPTConfig.from_dict(meta["model"])
    except GPT2KitError as e:
        raise GPT2KitError(f"{file}: {e}; edit the file or re-save the model") from None
    return ModelDir(path, config, hf)


def refuse_adapter_dir(path: str) -> None:
    """A LoRA adapter given where a model belongs: name the fix (its base, with the adapter on top)."""
    if os.path.exists(os.path.join(path, "adapter_config.json")) and not os.path.exists(os.path.join(path, CONFIG_FILE)):
        raise GPT2KitError(f"{path} is a LoRA adapter, not a model; load its base model with adapter={path!r}")


def _check_version(version, file: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GPT2KitError(f"{file}: {FORMAT_KEY} must be an integer >= 1, got {version!r:.60}; restore it or re-save the model")
    if version > FORMAT_VERSION:
        raise GPT2KitError(f"{file} was written by a newer gpt2kit (format {version}, this one reads {FORMAT_VERSION}); upgrade gpt2kit")


def is_checkpoint_dir(path: str) -> bool:
    p = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(p):
        return False
    meta = read_json(p, "config")
    return isinstance(meta, dict) and FORMAT_KEY in meta


def gpt2kit_key(name: str) -> str | None:
    """A weight's gpt2kit name ('transformer.h.0.ln_1.weight') from either naming; None for what is not stored."""
    name = name.removeprefix("transformer.")
    return None if name.endswith(HF_IGNORED) else "transformer." + name


# -- safetensors ------------------------------------------------------------------------------

def read_header(path: str) -> dict[str, dict]:
    """The tensor table of a safetensors file ({name: {"dtype", "shape", ...}}), read without the data."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > MAX_HEADER:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict) or not all(isinstance(v, dict) for k, v in header.items() if k != "__metadata__"):
            raise ValueError("header is not a tensor table")
    except FileNotFoundError:
        raise GPT2KitError(f"weights file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise GPT2KitError(f"cannot read {path}: bad header ({e}); the file is truncated or corrupt, re-download or re-save it") from None
    header.pop("__metadata__", None)
    return header


def check_float_weights(path: str, framework: str) -> None:
    """Refuse integer (or, for NumPy, bfloat16) weights from the header, before any tensor is read."""
    for name, info in read_header(path).items():
        dtype = info.get("dtype")
        if dtype not in FLOAT_DTYPES[framework]:
            fix = "use the torch backend or re-save it as float32" if dtype == "BF16" else "re-save the model with float weights"
            raise GPT2KitError(f"{path}: weight {name} is stored as {dtype}, not a float type {framework} can run; {fix}")


def read_safetensors(path: str, framework: str = "numpy") -> dict:
    """A model's weights as NumPy arrays (framework="numpy") or torch tensors ("torch"), dtypes checked first."""
    check_float_weights(path, framework)
    load_file = importlib.import_module(f"safetensors.{framework}").load_file
    try:
        try:
            return load_file(path, backend="pread")  # one allocation per tensor, no mmap beside it: half the peak RSS
        except TypeError:  # safetensors < 0.8 has no backend choice (pyproject allows >= 0.4)
            return load_file(path)
    except FileNotFoundError:
        raise GPT2KitError(f"weights file not found: {path}") from None
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GPT2KitError(f"cannot read {path}: {msg}; the file is truncated or corrupt, re-download or re-save it") from None
