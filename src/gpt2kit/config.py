"""Typed model configuration and the GPT-2 presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import GPT2KitError

# Upper bounds far above gpt2-xl (48 layers, 25 heads, 1600 wide, 1024 context, 50257 tokens), so that
# a mistyped or hostile config.json is refused before anything is built or allocated.
LIMITS = {"block_size": 1 << 20, "vocab_size": 1 << 24, "n_layer": 1024, "n_head": 1024, "n_embd": 1 << 16, "pad_vocab_multiple": 1 << 16}
MAX_PARAMS = 1 << 37  # ~137e9 parameters (512 GiB in float32); gpt2-xl has 1.6e9


@dataclass
class GPTConfig:
    block_size: int = 1024  # n_ctx: longest sequence the position table covers
    vocab_size: int = 50257  # the tokenizer's n_vocab; logits never cover more
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linear and LayerNorm
    layer_norm_epsilon: float = 1e-5
    # Rows of wte are padded to a multiple of this (e.g. 64: 50257 -> 50304) because
    # matmuls on round shapes are faster. Padded rows are sliced off the logits, so no
    # sampler can ever emit an id >= vocab_size.
    pad_vocab_multiple: int = 1

    def __post_init__(self) -> None:
        for name, limit in LIMITS.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= limit:
                raise GPT2KitError(f"config {name} must be a positive integer (at most {limit}), got {v!r:.60}")
        if self.n_embd % self.n_head:
            raise GPT2KitError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); pick e.g. n_head={_divisor(self.n_embd, self.n_head)}"
            )
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise GPT2KitError(f"config dropout must be a number in [0, 1), got {self.dropout!r:.60}")
        if not _is_number(self.layer_norm_epsilon) or not 0.0 < self.layer_norm_epsilon < 1.0:
            raise GPT2KitError(f"config layer_norm_epsilon must be a number in (0, 1), got {self.layer_norm_epsilon!r:.60}")
        if not isinstance(self.bias, bool):
            raise GPT2KitError(f"config bias must be true or false, got {self.bias!r:.60}")
        if self.n_params > MAX_PARAMS:
            raise GPT2KitError(f"config describes {self.n_params:,} parameters, over the {MAX_PARAMS:,} gpt2kit builds; use smaller n_layer / n_embd / vocab_size")

    @property
    def n_params(self) -> int:
        """Parameters the model holds (the tied head counted once): sized before anything is allocated."""
        C, b = self.n_embd, int(self.bias)
        block = 12 * C * C + b * 9 * C + (2 + 2 * b) * C  # attn 4C^2, mlp 8C^2, their biases, two LayerNorms
        return (self.padded_vocab_size + self.block_size) * C + self.n_layer * block + (1 + b) * C

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise GPT2KitError(f"unknown model config keys {sorted(unknown)}; valid keys: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, d: dict) -> "GPTConfig":
        """Map a transformers GPT2Config dict onto ours."""
        missing = [k for k in ("vocab_size", "n_layer", "n_head", "n_embd") if k not in d]
        if missing:
            raise GPT2KitError(f"HF GPT-2 config lacks {missing} (every GPT-2 config.json has them)")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise GPT2KitError(f"unsupported activation_function {act!r}: GPT-2 uses the tanh GELU ('gelu_new')")
        return cls(
            block_size=d.get("n_positions", d.get("n_ctx", 1024)),
            vocab_size=d["vocab_size"],
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            n_embd=d["n_embd"],
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        )

    def to_hf(self) -> dict:
        """A transformers GPT2Config dict (used by the HF export)."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "n_positions": self.block_size,
            "n_ctx": self.block_size,
            "vocab_size": self.vocab_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "n_inner": None,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "tie_word_embeddings": True,
            "scale_attn_weights": True,
            "use_cache": True,
        }


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))


# The four OpenAI releases. Names follow the HF hub (and OpenAI's 124M/355M/774M/1558M).
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
}
HUB_REPOS = {name: f"openai-community/{name}" for name in PRESETS}
ALIASES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}
for _name in PRESETS:
    ALIASES[HUB_REPOS[_name]] = _name


def preset(name: str) -> GPTConfig:
    """A fresh copy of a named preset ('gpt2', 'gpt2-medium', '774M', 'openai-community/gpt2-xl', ...)."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise GPT2KitError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[key])
