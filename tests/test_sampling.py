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


# -- a total sampler: degenerate distributions never give an out-of-range id ---------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("params", [SamplingParams(temperature=0), SamplingParams(), SamplingParams(top_k=2),
                                    SamplingParams(temperature=0.5, top_p=0.9)])
def test_degenerate_rows_fall_back_to_the_finite_argmax_or_minus_one(params):
    from gpt2kit.sampling import NO_FINITE_LOGIT

    logits = torch.tensor([[NAN, 1.0, 3.0, NAN],  # some NaN: argmax of the finite ones
                           [NAN, NAN, NAN, NAN],  # all NaN (NaN weights)
                           [-INF, -INF, -INF, -INF],  # no candidate at all
                           [INF, 2.0, INF, 0.0],  # +inf: softmax is NaN
                           [0.0, 9.0, 1.0, 2.0]])  # a normal row, unaffected
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = sample(logits, params, g).tolist()
        assert ids[:4] == [2, NO_FINITE_LOGIT, NO_FINITE_LOGIT, 1]
        assert 0 <= ids[4] < 4


def test_overflowing_temperature_is_greedy_and_tiny_top_p_keeps_the_top_token():
    logits = torch.tensor([[3e38, -3e38, 1e38, 0.0], [0.5, 0.1, 2.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    # 3e38 / 1e-4 overflows float32 to inf; the draw falls back to the argmax
    assert sample(logits, SamplingParams(temperature=1e-4), g).tolist() == [0, 2]
    # 1e-300 rounds to 0 in float32, so `mass_before >= top_p` would drop every token
    assert all(sample(logits, SamplingParams(top_p=1e-300), g).tolist() == [0, 2] for _ in range(10))
    assert all(sample(logits, SamplingParams(top_p=1e-300, top_k=3), g).tolist() == [0, 2] for _ in range(10))


def test_serve_rows_sampler_is_total():

    from gpt2kit.sampling import NO_FINITE_LOGIT, RowSampler, row_generator, sample_rows

    logits = torch.tensor([[NAN, 1.0, 3.0, NAN], [NAN] * 4, [0.0, 9.0, 1.0, 2.0]])
    for params in (SamplingParams(), SamplingParams(temperature=0), SamplingParams(top_p=1e-300)):
        rows = [RowSampler(params, row_generator(1, i, "cpu"), [], 4) for i in range(3)]
        ids = sample_rows(logits, rows)
        assert ids[:2] == [2, NO_FINITE_LOGIT] and 0 <= ids[2] < 4


@pytest.mark.parametrize("kw,needle", [(dict(temperature=1e-300), "use 0 for greedy"), (dict(temperature=NAN), "temperature"),
                                       (dict(repetition_penalty=1e-300), "repetition_penalty"),
                                       (dict(repetition_penalty=1e300), "repetition_penalty"),
                                       (dict(top_p=-1e-300), "top_p")])
def test_numerically_degenerate_settings_are_refused_with_a_reason(kw, needle):
    with pytest.raises(GPT2KitError, match=needle):
        SamplingParams(**kw)


@pytest.mark.parametrize("seed", [-1, 2**64, -2**64, 10**400, 1.5, True, "3"])
def test_seeds_outside_64_bits_are_refused(seed):
    from gpt2kit.sampling_params import check_seed

    with pytest.raises(GPT2KitError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        check_seed(seed)


def test_largest_seed_works_everywhere(tiny_checkpoint):
    from gpt2kit import generate, load_model

    model = load_model(tiny_checkpoint)
    a = list(generate(model, [1, 2], 5, seed=2**64 - 1))
    assert a == list(generate(model, [1, 2], 5, seed=2**64 - 1)) and all(0 <= t < 50257 for t in a)
    with pytest.raises(GPT2KitError, match="seed"):
        list(generate(model, [1, 2], 5, seed=2**64))


def test_nan_weights_give_a_clear_error_not_a_bad_id(tiny_checkpoint):
    from gpt2kit import generate, load_model
    from gpt2kit.sampling_params import NAN_LOGITS_MESSAGE

    model = load_model(tiny_checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(NAN)
    for kw in (dict(temperature=0), dict(temperature=1.0), dict(top_k=5)):
        with pytest.raises(GPT2KitError) as e:
            list(generate(model, [1, 2], 3, seed=0, **kw))
        assert str(e.value) == NAN_LOGITS_MESSAGE


def test_sampling_params_is_torch_free_and_shared_with_numpy_gpt2():
    import subprocess
    import sys

    code = ("import sys; import gpt2kit.sampling_params as s, gpt2kit.numpy_gpt2 as n; "
            "assert 'torch' not in sys.modules; assert n.check_sampling is s.check_sampling")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from gpt2kit import SamplingParams as exported
    from gpt2kit.sampling_params import SamplingParams as home

    assert exported is home is SamplingParams


def test_cli_rejects_degenerate_settings_in_one_line(tiny_checkpoint):
    from conftest import assert_one_line_error, cli_in_process as cli

    for backend in ("torch", "numpy"):
        base = ("generate", "hi", "--model", tiny_checkpoint, "--max-new-tokens", "3", "--backend", backend)
        r = cli(*base, "--seed", "99999999999999999999999")
        assert_one_line_error(r, "seed must be an integer in [0, 2**64)")
        assert r.stdout == ""  # refused before the prompt is echoed
        assert_one_line_error(cli(*base, "--seed", "-5"), "seed must be an integer in [0, 2**64)")
        r = cli(*base, "--temperature", "1e-300")
        assert_one_line_error(r, "use 0 for greedy")
        assert r.stdout == ""


def test_two_level_topk_and_numpy_greedy_equal_torch():
    from gpt2kit.sampling import NO_FINITE_LOGIT, greedy, topk

    g = torch.Generator().manual_seed(0)
    full = torch.randn(5, 50304, generator=g)
    logits = full[:, :50257]  # a C step's rows: a view with a padded stride, and a tail no block of 64 holds
    logits[1, 50200:] += 10  # row 1's largest entries sit in the tail
    logits[2, ::2] = float("-inf")
    logits[3, 7] = float("nan")  # NaN counts as maximal, as torch.argmax has it
    logits[4, 100] = logits[4, 30000] = 50.0  # a tie: the first index wins
    for k in (1, 40, 100):
        vals, ids = topk(logits[[0, 1, 2, 4]], k)
        want = torch.topk(logits[[0, 1, 2, 4]], k, dim=-1)
        assert torch.equal(vals, want.values) and torch.equal(ids, want.indices)
    want = torch.argmax(logits, dim=-1)
    want[3] = torch.argmax(torch.nan_to_num(logits[3], nan=float("-inf")))  # greedy skips the NaN
    assert greedy(logits).tolist() == want.tolist() == greedy(logits.contiguous()).tolist()
    assert greedy(logits)[4] == 100  # of two equal maxima, the first
    assert greedy(torch.full((2, 9), float("nan"))).tolist() == [NO_FINITE_LOGIT] * 2
