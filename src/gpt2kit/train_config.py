"""Typed training configuration: presets (TOML files shipped in gpt2kit/presets), config files, CLI flags.

Field names are nanoGPT's keys (lr, min_lr, grad_accum, ...); each is a `--flag` of `gpt2kit train`.
Precedence: dataclass defaults < --preset < --config FILE < explicit flags.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import resources

from .errors import GPT2KitError


@dataclass
class TrainConfig:
    # data and output
    data: str = ""  # a prepared data dir, or a built-in corpus: python-stdlib, shakespeare
    out: str = "runs/default"  # run dir: checkpoint (config.json, model.safetensors, tokenizer/), state, logs
    tokenizer: str = "char"  # used when `data` is a built-in corpus that is prepared on the fly
    init_from: str = "scratch"  # scratch | gpt2 | gpt2-medium | ... | a model dir (finetune)
    sft: bool = False  # data is a JSONL file of {"messages": [...]} chats; loss on assistant tokens (gpt2kit.sft)
    # model (ignored when init_from is a pretrained model, except dropout and a smaller block_size)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    dropout: float = 0.0
    bias: bool = True
    pad_vocab_multiple: int = 64  # round wte rows up for faster matmuls; sliced off the logits
    # LoRA (peft's defaults): with lora_rank > 0 only adapters on the init_from model train; out/ holds the adapter
    lora_rank: int = 0  # 0 = off: finetune every weight
    lora_alpha: float = 8.0  # the adapter's scaling is lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: str = "c_attn"  # comma list of c_attn, c_proj, c_fc (attn.c_proj / mlp.c_proj for one c_proj)
    # optimisation
    batch_size: int = 12
    grad_accum: int = 1  # micro-steps per optimizer step (in total, across DDP ranks)
    max_iters: int = 5000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 100
    lr_decay_iters: int = 5000
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    always_save_checkpoint: bool = False  # top-level model: the best val loss (False) or the latest (True)
    tensorboard: bool = False
    plot: bool = True  # loss.png at the end
    samples: int = 0  # samples to print at the end
    sample_tokens: int = 200
    sample_prompt: str = ""  # empty: start from EOT (or a newline for tokenizers without one)
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | float32 | bfloat16 | float16
    compile: bool = False
    strategy: str = "ddp"  # under torchrun: ddp (a whole model per process) | fsdp (sharded, FSDP2)
    seed: int = 1337
    threads: int = 0  # torch CPU threads; 0 = torch's default
    progress: bool = True

    def __post_init__(self) -> None:
        for name, f in FIELDS.items():  # a NaN would train to NaN loss and save it
            if f.type == "float" and not math.isfinite(getattr(self, name)):
                raise GPT2KitError(f"{name} must be a finite number, got {getattr(self, name)}")
        positive = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "max_iters",
                    "lr_decay_iters", "eval_interval", "eval_iters", "log_interval", "pad_vocab_multiple"]
        for name in positive:
            if getattr(self, name) < 1:
                raise GPT2KitError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_iters", "samples", "threads"):
            if getattr(self, name) < 0:
                raise GPT2KitError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr < 1 or not 0 <= self.min_lr <= self.lr:
            raise GPT2KitError(f"need 0 < lr < 1 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.dropout < 1:
            raise GPT2KitError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise GPT2KitError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.n_embd % self.n_head:
            raise GPT2KitError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        self._check_optimizer_and_system()
        self._check_lora()

    def _check_optimizer_and_system(self) -> None:
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise GPT2KitError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise GPT2KitError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy's legacy seed range, used for the RNG state of a run
            raise GPT2KitError(f"seed must be in [0, 2**32), got {self.seed}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise GPT2KitError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        self._check_strategy()

    def _check_strategy(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise GPT2KitError(f"strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.strategy == "fsdp" and self.dtype == "float16":
            raise GPT2KitError("strategy='fsdp' trains in bfloat16 or float32 (float16 would need a loss scaler over "
                               "sharded gradients); use dtype='bfloat16'")
        if self.strategy == "fsdp" and self.lora_rank:
            raise GPT2KitError("strategy='fsdp' shards full weights; a LoRA run (lora_rank > 0) trains small adapters: use strategy='ddp'")
        if self.strategy == "fsdp" and self.device == "mps":
            raise GPT2KitError("strategy='fsdp' runs on cuda (nccl) or cpu (gloo); use device='cuda' or device='cpu'")

    def _check_lora(self) -> None:
        if self.lora_rank < 0:
            raise GPT2KitError(f"lora_rank must be >= 0 (0 = finetune every weight), got {self.lora_rank}")
        if self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise GPT2KitError(f"need lora_alpha > 0 and lora_dropout in [0, 1), got {self.lora_alpha}, {self.lora_dropout}")
        if self.lora_rank and self.init_from == "scratch":
            raise GPT2KitError("lora_rank adapts a trained model: set init_from to one (a hub name or a model dir)")
        self.lora_spec()  # the targets are known layer names

    def lora_spec(self):
        """The adapter this run trains (a lora_format.LoraSpec), or None when lora_rank is 0."""
        from .lora_format import LoraSpec, parse_targets

        targets = parse_targets(self.lora_targets)
        return LoraSpec(self.lora_rank, self.lora_alpha, targets, self.lora_dropout, base=self.init_from) if self.lora_rank else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("gpt2kit.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict:
    path = resources.files("gpt2kit.presets") / f"{name}.toml"
    if not path.is_file():
        raise GPT2KitError(f"unknown preset {name!r}; choose one of {preset_names()}")
    return _parse_toml(path.read_text(encoding="utf-8"), f"preset {name}")


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise GPT2KitError(f"config file not found: {path}")
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError:
        raise GPT2KitError(f"config file {path} is not UTF-8 text; it must be a TOML or JSON file of config fields") from None
    if path.endswith(".json"):
        try:
            return _check_keys(json.loads(text), path)
        except json.JSONDecodeError as e:
            raise GPT2KitError(f"{path} is not valid JSON: {e}") from None
    return _parse_toml(text, path)


def _parse_toml(text: str, where: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GPT2KitError(f"{where} is not valid TOML: {e}") from None
    d.pop("description", None)
    return _check_keys(d, where)


def _check_keys(d: dict, where: str) -> dict:
    if not isinstance(d, dict):
        raise GPT2KitError(f"{where} must hold a table of config fields, got {type(d).__name__}")
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise GPT2KitError(f"{where}: unknown keys {unknown}; see `gpt2kit train --help` for the fields")
    return d


def make_config(preset: str | None = None, config_file: str | None = None, overrides: dict | None = None) -> TrainConfig:
    values: dict = {}
    if preset:
        values.update(load_preset(preset))
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values, "config")


def config_from_dict(values: dict, where: str) -> TrainConfig:
    """A TrainConfig from JSON/TOML values, checking keys and types (a saved train_config.json too)."""
    values = dict(_check_keys(values, where))
    for k, v in values.items():  # TOML/JSON types must match the dataclass
        want = FIELDS[k].type
        if want == "float" and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
        elif want in ("int", "float", "bool", "str") and type(values[k]).__name__ != want:
            raise GPT2KitError(f"{where}: key {k} must be {want}, got {v!r}")
    return TrainConfig(**values)
