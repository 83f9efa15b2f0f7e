"""LoRA (Hu et al. 2021) on GPT's Linear layers, trained, saved and loaded the way Hugging Face peft does.

A targeted nn.Linear W (out, in) computes W x + b + scaling * B A dropout(x), with A (r, in)
kaiming-uniform and B (out, r) zero as in peft, so training starts exactly at the base model.
LoRALinear keeps the base layer's weight and bias as its own `weight`/`bias`: the base's
state-dict keys are unchanged and the adapter's are `...c_attn.lora_A.weight`, peft's saved
names without its 'base_model.model.' prefix. The file format lives in lora_format.py.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GPT2KitError
from .fileio import atomic_dir, atomic_path, write_json_atomic
from .lora_format import (BIN_FILE, CONFIG_FILE, WEIGHTS_FILE, LoraSpec, adapter_key, block_linears, model_key,
                          peft_config, read_adapter_config, weights_file)

ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, BIN_FILE, "meta.json")  # what save_adapter owns in its directory


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update; peft's lora.Linear forward, term for term."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float, dropout: float = 0.0, generator=None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the base's Parameters: keys and tying unchanged
        kw = {"device": base.weight.device, "dtype": base.weight.dtype, "bias": False}
        self.lora_A = nn.Linear(self.in_features, rank, **kw)
        self.lora_B = nn.Linear(rank, self.out_features, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)  # peft's default init
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = scaling
        self.lora_dropout = dropout  # a float, not nn.Dropout: train.set_dropout sets the base's dropout only

    def forward(self, x):
        h = F.dropout(x, self.lora_dropout, self.training) if self.lora_dropout else x
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(h)) * self.scaling

    def delta(self) -> torch.Tensor:
        return delta_weight(self.lora_A.weight, self.lora_B.weight, self.scaling)


def delta_weight(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The update LoRA adds to W (out, in): scaling * B A, computed in float32."""
    return (B.float() @ A.float()) * scaling


# -- wrapping a model -------------------------------------------------------------------------

def targeted(model, spec: LoraSpec) -> list[str]:
    """The module names spec adapts in model; refuses targets that match none and ranks wider than a layer."""
    names = [n for n in block_linears(model.config.n_layer) if spec.matches(n)]
    if not names:
        raise GPT2KitError(f"LoRA targets {spec.targets!r} match no layer of the model; use c_attn, c_proj and/or c_fc")
    width = min(min(model.get_submodule(n).weight.shape) for n in names)
    if spec.rank > width:
        raise GPT2KitError(f"LoRA rank {spec.rank} exceeds the narrowest targeted layer ({width}); "
                           f"use a rank of at most {width} (typically 4 to 64)")
    return names


def add_lora(model, spec: LoraSpec, seed: int = 0):
    """Freeze every weight of model and wrap the targeted Linear layers with fresh adapters (in place)."""
    names = targeted(model, spec)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)  # the adapters' init does not touch the global RNG
    for name in names:
        parent, attr = name.rsplit(".", 1)
        layer = LoRALinear(model.get_submodule(name), spec.rank, spec.scaling, spec.dropout, generator=g)
        setattr(model.get_submodule(parent), attr, layer)
    return model


def lora_layers(model) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under gpt2kit's names (transformer.h.0.attn.c_attn.lora_A.weight, ...)."""
    return {f"{n}.lora_{ab}.weight": getattr(m, f"lora_{ab}").weight.detach().contiguous().cpu()
            for n, m in lora_layers(model).items() for ab in "AB"}


def load_adapter_state(model, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved adapter tensors (gpt2kit names) into a model wrapped by add_lora, every key and shape checked."""
    own = adapter_state(model)
    if set(sd) != set(own):
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        raise GPT2KitError(f"{source}: the adapter does not match the run's LoRA layers (missing {missing[:2]}, "
                           f"unexpected {unexpected[:2]}); the state is corrupt or from another run")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in sd.items():
            if v.shape != own[k].shape:
                raise GPT2KitError(f"{source}: {k} has shape {tuple(v.shape)} but the run needs {tuple(own[k].shape)}")
            params[k].copy_(v)


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model):
    """Fold every adapter into its base weight and unwrap it: a plain GPT that computes the same function."""
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.weight.add_(layer.delta().to(layer.weight.dtype))
            base = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
            base.weight, base.bias = layer.weight, layer.bias
            parent, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attr, base)
    return model


# -- adapter files ------------------------------------------------------------------------------

@dataclass
class Adapter:
    """An adapter read from disk: its spec and tensors per module ({module: (A, B)})."""

    path: str
    spec: LoraSpec
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]


def save_adapter(model, directory: str | os.PathLike, spec: LoraSpec, meta: dict | None = None) -> None:
    """Write adapter_config.json + adapter_model.safetensors (peft's format), swapped in as a whole."""
    from safetensors.torch import save_file

    model = getattr(model, "module", getattr(model, "_orig_mod", model))
    sd = {adapter_key(k): v for k, v in adapter_state(model).items()}
    with atomic_dir(directory, owns=ADAPTER_FILES) as tmp:
        with atomic_path(os.path.join(tmp, WEIGHTS_FILE)) as f:
            save_file(sd, f, metadata={"format": "pt"})
        if meta is not None:
            write_json_atomic(os.path.join(tmp, "meta.json"), meta)
        write_json_atomic(os.path.join(tmp, CONFIG_FILE), peft_config(spec))


def read_adapter(path: str | os.PathLike) -> Adapter:
    """An adapter dir written by gpt2kit or peft: config and tensors checked against each other."""
    from .weights import read_safetensors, read_torch_bin

    path = os.fspath(path)
    spec = read_adapter_config(path)
    file = weights_file(path)
    sd = read_safetensors(file) if file.endswith(".safetensors") else read_torch_bin(file)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in sd.items():
        _, module, ab = model_key(key, file)
        parts.setdefault(module, {})[ab] = v
    layers = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise GPT2KitError(f"{file}: {module} has lora_{next(iter(ab))} but not its pair; the file is incomplete, re-save the adapter")
        A, B = ab["A"], ab["B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != spec.rank or B.shape[1] != spec.rank:
            raise GPT2KitError(f"{file}: {module} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}, not rank "
                               f"r={spec.rank} of {CONFIG_FILE}; the config and weights are from different adapters")
        layers[module] = (A, B)
    if not layers:
        raise GPT2KitError(f"{file} holds no LoRA tensors; re-save the adapter")
    return Adapter(path, spec, layers)


def check_fits(model, adapter: Adapter) -> None:
    """Every adapted layer exists in model with the adapter's (in, out) sizes: else it was trained on another base."""
    modules = dict(model.named_modules())
    trained_on = f" (it was trained on {adapter.spec.base})" if adapter.spec.base else ""
    for module, (A, B) in adapter.layers.items():
        layer = modules.get(module)
        if layer is None:
            raise GPT2KitError(f"adapter {adapter.path} adapts {module}, which the model does not have{trained_on}; "
                               "load it on the base model it was trained from")
        want = (layer.weight.shape[0], layer.weight.shape[1])
        if (B.shape[0], A.shape[1]) != want:
            raise GPT2KitError(f"adapter {adapter.path} is for another base shape: {module} is {want[0]}x{want[1]} here "
                               f"but {B.shape[0]}x{A.shape[1]} in the adapter{trained_on}; load it on the base model it was trained from")


def merge_adapter(model, adapter: Adapter):
    """Add scaling * B A to each adapted weight of a plain GPT, in place (for inference, merge and export)."""
    check_fits(model, adapter)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for module, (A, B) in adapter.layers.items():
            w = modules[module].weight
            w.add_(delta_weight(A, B, adapter.spec.scaling).to(device=w.device, dtype=w.dtype))
    return model


def wrap_adapter(model, adapter: Adapter, seed: int = 0):
    """The model with LoRALinear layers holding the adapter's weights, unmerged (for training on, and tests)."""
    check_fits(model, adapter)
    spec = adapter.spec
    add_lora(model, LoraSpec(spec.rank, spec.alpha, tuple(adapter.layers), spec.dropout, spec.rslora), seed)  # exact names
    load_adapter_state(model, {f"{m}.lora_{ab}.weight": t for m, (A, B) in adapter.layers.items() for ab, t in zip("AB", (A, B))},
                       adapter.path)
    return model
