"""The torch model against transformers' GPT2LMHeadModel on the same random weights."""
import pytest
import torch

from conftest import hf_model, ours_from_hf
from gpt2kit.config import GPTConfig
from gpt2kit.model import GPT

SHAPES = [
    dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=97),
    dict(n_layer=3, n_head=4, n_embd=64, n_positions=128, vocab_size=50257),
    dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),  # GPT-2 124M
]


@pytest.mark.parametrize("shape", SHAPES, ids=["tiny", "small", "124M"])
def test_logits_and_loss_match_transformers(shape):
    hf = hf_model(**shape)
    ours = ours_from_hf(hf)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, shape["vocab_size"], (2, 24), generator=g)
    targets = torch.randint(0, shape["vocab_size"], (2, 24), generator=g)
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, _ = ours(idx)
        _, loss_t = ours(idx[:, :-1], idx[:, 1:])
        _, loss2 = ours(idx, targets)
        ref2 = torch.nn.functional.cross_entropy(ref.logits.reshape(-1, shape["vocab_size"]), targets.reshape(-1))
    assert logits.shape == ref.logits.shape
    assert (logits - ref.logits).abs().max().item() <= 1e-5
    # HF shifts labels internally: its loss on idx equals ours on (idx[:-1] -> idx[1:])
    assert abs(loss_t.item() - ref.loss.item()) <= 1e-5
    assert abs(loss2.item() - ref2.item()) <= 1e-5


def test_greedy_with_and_without_cache_30_steps():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=61)).eval()
    from gpt2kit import generate

    got = list(generate(m, [1, 2, 3], 30, temperature=0))
    seq = [1, 2, 3]
    with torch.no_grad():
        for _ in range(30):
            seq.append(int(m(torch.tensor([seq]))[0][0, -1].argmax()))
    assert got == seq[3:]


def test_padded_vocab_never_exposed():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50, pad_vocab_multiple=64))
    assert m.transformer.wte.weight.shape[0] == 64
    with torch.no_grad():
        m.transformer.wte.weight[50:] = 100.0  # padding rows would win every argmax if exposed
        logits, _ = m(torch.tensor([[1, 2, 3]]))
    assert logits.shape[-1] == 50
    from gpt2kit import generate

    assert all(t < 50 for t in generate(m, [1, 2], 20, seed=0))


def test_residual_projection_init_scaled():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=32, vocab_size=1000))
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 5e-4
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 5e-4
    assert m.lm_head.weight is m.transformer.wte.weight


def test_config_validation():
    from gpt2kit.errors import GPT2KitError

    with pytest.raises(GPT2KitError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(GPT2KitError, match="positive"):
        GPTConfig(n_layer=0)
    from gpt2kit.config import preset

    assert (preset("gpt2-xl").n_layer, preset("774M").n_embd, preset("openai-community/gpt2-medium").n_head) == (48, 1280, 16)
