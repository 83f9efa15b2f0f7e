"""Optional dependencies: import one, or fail with the one line that installs it.

The core install is what generation and training need; each extra below adds a feature.
Keep EXTRAS in step with [project.optional-dependencies] in pyproject.toml.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import GPT2KitError

# top-level module -> the extra that installs it
EXTRAS = {
    "jieba": "zh",
    "gguf": "interop", "google_crc32c": "interop",
    "matplotlib": "plot",
    "datasets": "data", "pyarrow": "data",
    "fastapi": "serve", "uvicorn": "serve", "gradio": "serve", "httpx": "serve",
}


def require(module: str, purpose: str) -> ModuleType:
    """`module`, imported; if it is missing, a GPT2KitError naming the pip install that adds it.

    purpose: what needs it, e.g. "the word tokenizer" -> "the word tokenizer needs jieba ...".
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = (e.name or top).split(".")[0]
        extra = EXTRAS.get(missing, EXTRAS[top])
        raise GPT2KitError(f"{purpose} needs {missing}, which is not installed: pip install 'gpt2kit[{extra}]'") from None
