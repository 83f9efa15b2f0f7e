import os
from pathlib import Path

import pytest

# CI clones the repo next to shared/; tests read the shared corpora from there.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CI always has it)")
    return SHARED_DATA


def hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, seed=0):
    """A randomly initialised transformers GPT2LMHeadModel: the oracle for parity tests."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    m = GPT2LMHeadModel(cfg).eval()
    # HF's init leaves biases and LayerNorm at 0/1; perturb them so the test covers every weight.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.02)
    return m


def ours_from_hf(hf):
    from gpt2kit.config import GPTConfig
    from gpt2kit.weights import build_model, from_hf_state_dict

    return build_model(GPTConfig.from_hf(hf.config.to_dict()), from_hf_state_dict({k: v.clone() for k, v in hf.state_dict().items()}))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight gpt2kit checkpoint dir with GPT-2's tokenizer."""
    import torch

    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT
    from gpt2kit.tokenization import get_tokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)), d, tokenizer=get_tokenizer("gpt2"))
    return d


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
