"""The LoRA adapter format, torch-free: Hugging Face peft's files and key names for GPT-2.

An adapter directory (peft's save_pretrained layout) holds:

    adapter_config.json         peft's LoraConfig: peft_type "LORA", r, lora_alpha, target_modules, ...
    adapter_model.safetensors   base_model.model.transformer.h.N.attn.c_attn.lora_A.weight (r, in)
                                base_model.model.transformer.h.N.attn.c_attn.lora_B.weight (out, r)

peft wraps HF's Conv1D (weight (in, out)) with fan_in_fan_out=True, but its lora_A/lora_B are
nn.Linear layers sized from (in, out), so the stored tensors have exactly the shapes of gpt2kit's
nn.Linear adapters: nothing is transposed on save or load. target_modules follows peft's rule: a
list entry matches a module named exactly so or ending in "." + entry; a string is a full regex.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from .errors import GPT2KitError
from .fileio import read_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"  # older peft versions
PREFIX = "base_model.model."  # peft's PeftModel -> LoraModel -> GPT2LMHeadModel
LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the Linear layers of a block
DEFAULT_TARGETS = "c_attn"  # peft's default target_modules for GPT-2
KEY = re.compile(r"(transformer\.h\.\d+\.(?:attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj))\.lora_([AB])\.weight")


@dataclass(frozen=True)
class LoraSpec:
    """What an adapter is: rank, alpha (the scaling is alpha / rank, or alpha / sqrt(rank) with rslora), targets."""

    rank: int
    alpha: float
    targets: tuple[str, ...] | str = (DEFAULT_TARGETS,)  # peft's target_modules: names, or one regex
    dropout: float = 0.0
    rslora: bool = False
    base: str | None = None  # base_model_name_or_path: what the adapter was trained on

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def matches(self, module: str) -> bool:
        """peft's check_target_module_exists for a module name like 'transformer.h.0.attn.c_attn'."""
        if isinstance(self.targets, str):
            return re.fullmatch(self.targets, module) is not None
        return any(module == t or module.endswith("." + t) for t in self.targets)


def block_linears(n_layer: int) -> list[str]:
    """The names of every Linear layer LoRA can adapt in an n_layer GPT-2."""
    return [f"transformer.h.{i}.{name}" for i in range(n_layer) for name in LAYERS]


def parse_targets(text: str) -> tuple[str, ...]:
    """'c_attn,c_proj,c_fc' -> ('c_attn', 'c_proj', 'c_fc'), each naming a block's Linear layer."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise GPT2KitError(f"lora_targets={text!r} names no layer; use a comma list of c_attn, c_proj, c_fc")
    for t in targets:
        if not any(f"x.{name}".endswith("." + t) for name in LAYERS):
            raise GPT2KitError(f"lora_targets: unknown layer {t!r}; GPT-2's are c_attn, c_proj, c_fc "
                               "(attn.c_proj or mlp.c_proj for one of the two c_proj)")
    return targets


def peft_config(spec: LoraSpec) -> dict:
    """adapter_config.json as peft's LoraConfig writes it (the fields that matter; peft fills in the rest)."""
    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": spec.base,
        "r": spec.rank, "lora_alpha": alpha, "lora_dropout": spec.dropout,
        "target_modules": spec.targets if isinstance(spec.targets, str) else sorted(spec.targets),
        "fan_in_fan_out": True,  # HF GPT-2's Conv1D; the stored tensors do not depend on it
        "bias": "none", "lora_bias": False, "use_rslora": spec.rslora, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }


def weights_file(path: str) -> str:
    """The adapter's weights file (safetensors, or an older peft's .bin), checked before anything is loaded."""
    for name in (WEIGHTS_FILE, BIN_FILE):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise GPT2KitError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}; copy the adapter's weights file next to it")


def read_adapter_config(path: str) -> LoraSpec:
    """The LoraSpec of an adapter dir (gpt2kit's or peft's), refusing what gpt2kit cannot apply exactly."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        what = f"holds no {CONFIG_FILE}" if os.path.isdir(path) else "is not a directory"
        raise GPT2KitError(f"adapter={path!r} {what}; give a LoRA adapter dir "
                           "(a LoRA training run's out dir, or peft's save_pretrained dir)")
    c = read_json(file, "adapter config")
    if not isinstance(c, dict) or c.get("peft_type") != "LORA":
        got = c.get("peft_type") if isinstance(c, dict) else type(c).__name__
        raise GPT2KitError(f"{file}: peft_type is {got!r}, not 'LORA'; only LoRA adapters load in gpt2kit")
    rank, alpha = c.get("r"), c.get("lora_alpha", 8)
    if not _is_int(rank) or rank < 1:
        raise GPT2KitError(f"{file}: r must be a positive integer (the LoRA rank), got {rank!r:.40}; restore the file")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise GPT2KitError(f"{file}: lora_alpha must be a positive number, got {alpha!r:.40}; restore the file")
    _refuse_variants(c, file)
    targets = c.get("target_modules") or DEFAULT_TARGETS
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        targets = tuple(targets)
    elif not isinstance(targets, str):
        raise GPT2KitError(f"{file}: target_modules must be a list of names or a regex, got {targets!r:.60}")
    dropout = c.get("lora_dropout") or 0.0
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise GPT2KitError(f"{file}: lora_dropout must be a number in [0, 1), got {dropout!r:.40}; restore the file")
    base = c.get("base_model_name_or_path")
    return LoraSpec(rank, float(alpha), targets, float(dropout), bool(c.get("use_rslora")), base if isinstance(base, str) else None)


def _refuse_variants(c: dict, file: str) -> None:
    """peft options that change the math beyond W + scaling * B A: refused rather than applied wrongly."""
    unsupported = {
        "use_dora": bool(c.get("use_dora")), "bias": c.get("bias", "none") != "none", "lora_bias": bool(c.get("lora_bias")),
        "modules_to_save": bool(c.get("modules_to_save")), "rank_pattern": bool(c.get("rank_pattern")),
        "alpha_pattern": bool(c.get("alpha_pattern")), "layers_to_transform": c.get("layers_to_transform") is not None,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise GPT2KitError(f"{file}: {bad[0]}={c.get(bad[0])!r:.40} is a peft variant gpt2kit does not apply; "
                           "merge the adapter with peft (merge_and_unload) and load the merged model")


def adapter_key(name: str) -> str:
    """gpt2kit's parameter name ('transformer.h.0.attn.c_attn.lora_A.weight') -> peft's saved key."""
    return PREFIX + name


def model_key(key: str, file: str) -> tuple[str, str, str]:
    """peft's saved key -> (gpt2kit parameter name, module name, 'A' or 'B'), refusing any other tensor."""
    name = key.removeprefix(PREFIX)
    m = KEY.fullmatch(name)
    if m is None:
        raise GPT2KitError(f"{file}: tensor {key!r:.80} is not a LoRA A/B matrix of GPT-2's c_attn, c_proj or c_fc; "
                           "gpt2kit loads plain LoRA adapters of those layers only")
    return name, m.group(1), m.group(2)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
