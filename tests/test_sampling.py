"""Sampling filters against transformers' own logits processors."""
import pytest
import torch

from gpt2kit.errors import GPT2KitError
from gpt2kit.sampling import SamplingParams, filter_logits, sample


def test_top_k_top_p_match_transformers_warpers():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 3
    for k, p, t in [(40, None, 1.0), (None, 0.9, 0.7), (50, 0.95, 1.3), (5000, 0.5, 1.0)]:
        ours = filter_logits(logits, SamplingParams(temperature=t, top_k=k, top_p=p))
        ref = TemperatureLogitsWarper(t)(None, logits.clone())
        if k is not None:
            ref = TopKLogitsWarper(min(k, 1000))(None, ref)
        if p is not None:
            ref = TopPLogitsWarper(p)(None, ref)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (k, p, t)
        keep = ~torch.isinf(ref)
        assert torch.allclose(ours[keep], ref[keep])
    ids = torch.randint(0, 1000, (4, 30))
    seen = torch.zeros(4, 1000, dtype=torch.bool).scatter(1, ids, True)
    from gpt2kit.sampling import apply_repetition_penalty

    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone()))


def test_greedy_and_top_p_keeps_one():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert sample(logits, SamplingParams(temperature=0)).item() == 1
    g = torch.Generator().manual_seed(0)
    assert all(sample(logits, SamplingParams(top_p=1e-9), g).item() == 1 for _ in range(20))
    assert all(sample(logits, SamplingParams(top_k=1), g).item() == 1 for _ in range(20))


def test_sampling_follows_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(20000, 1)
    counts = torch.bincount(sample(logits, SamplingParams(), g), minlength=3).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.015)


@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(temperature=float("inf")), dict(top_k=0), dict(top_k=-3),
                                dict(top_k=2.5), dict(top_p=0), dict(top_p=1.01), dict(top_p=float("nan")),
                                dict(repetition_penalty=-1)])
def test_validation(kw):
    with pytest.raises(GPT2KitError):
        SamplingParams(**kw)


@pytest.mark.parametrize("kw,expect", [
    (dict(top_k=2), [0.625, 0.375, 0.0, 0.0]),  # 0.5 and 0.3 renormalised
    (dict(top_p=0.85), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),
    (dict(top_k=3, top_p=0.7), [0.625, 0.375, 0.0, 0.0]),
])
def test_filtered_sampling_follows_the_filtered_distribution(kw, expect):
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(40000, 1)
    counts = torch.bincount(sample(logits, SamplingParams(**kw), g), minlength=4).float() / 40000
    assert torch.allclose(counts, torch.tensor(expect), atol=0.01)
