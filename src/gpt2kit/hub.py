"""Model names -> local directories: GPT-2 releases come through the HF hub cache.

Torch-free on purpose: numpy_gpt2 resolves `--model gpt2` with it and must never load torch.
"""
from __future__ import annotations

import os

from .config import ALIASES, HUB_REPOS
from .errors import GPT2KitError

HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "generation_config.json"]


def hub_repo(name: str) -> str | None:
    """'gpt2' / '355M' / 'openai-community/gpt2-large' -> the hub repo id, else None."""
    key = ALIASES.get(name, name)
    return HUB_REPOS.get(key)


def download(name: str) -> str:
    """Fetch a GPT-2 release into the HF hub cache (progress bars from huggingface_hub); return its dir.

    With HF_HUB_OFFLINE=1, or when the hub cannot be reached, a cached copy is used.
    """
    repo = hub_repo(name)
    if repo is None:
        raise GPT2KitError(f"unknown model {name!r}; choose one of {sorted(HUB_REPOS)} or pass a model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(repo_id=repo, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError:
        raise GPT2KitError(
            f"cannot fetch {repo} from the HF hub (offline?) and it is not in the local cache; "
            "connect once to download it, or pass a local model directory"
        ) from None
    except Exception as e:
        raise GPT2KitError(f"downloading {repo} failed: {str(e).splitlines()[0]}; check the network or pass a local model directory") from None
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise GPT2KitError(f"{repo} in the hub cache at {path} has no model.safetensors; re-run `gpt2kit download {name}`")
    return path


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """A local directory for a model name or path (hub names are fetched into the cache)."""
    s = os.fspath(name_or_path)
    if os.path.isdir(s):
        return s
    if os.path.exists(s):
        raise GPT2KitError(f"{s} is a file; pass a model directory (to read other formats, use `gpt2kit convert {s}`)")
    if hub_repo(s) is not None:
        return download(s)
    raise GPT2KitError(f"model not found: {s!r} is neither a directory nor a GPT-2 hub name ({', '.join(sorted(HUB_REPOS))})")
