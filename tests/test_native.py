"""The C decode step (inference/native.py) against the torch model it stands in for."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import hf_model, ours_from_hf
from gpt2kit import generate
from gpt2kit.inference import native
from gpt2kit.inference.engine import Engine
from gpt2kit.inference.native import native_step
from gpt2kit.quantize import quantize_int4, quantize_int8
from gpt2kit.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not native.available(), reason="the C decode step was not built (no C compiler at install)")


@pytest.fixture(params=["avx512", "portable"])
def kernels(request):
    """Each fp32/bf16 test runs on the AVX-512 kernels (where the CPU has them) and on the portable loops."""
    from gpt2kit.inference import _decode

    before = _decode.avx512()
    if request.param == "avx512" and not before:
        pytest.skip("this CPU has no AVX-512 with VNNI")
    _decode.avx512(request.param == "avx512")
    yield request.param
    _decode.avx512(before)


def _run(model, use_native, prompts, n=24, int8_activations=None, **engine_kw):
    """Greedy decode of every prompt at once; returns the tokens and the logits of every decode step."""
    e = Engine(model, native=use_native, adapt_threads=False, **engine_kw)
    assert (e.native is not None) == use_native
    if int8_activations is not None:
        e.native = native_step(e.model, e.pool, int8_activations)
        assert e.native.int8_activations == int8_activations
    rows = [e.add(p, SamplingParams(temperature=0), max_tokens=n) for p in prompts]
    steps, forward = [], e._forward

    def record(work):
        logits, at, was_native = forward(work)
        if all(k == 1 for _, k in work):
            steps.append(logits.clone())
        return logits, at, was_native

    e._forward = record
    while e.has_work:
        e.step()
    return [r.tokens for r in rows], steps


def _same_steps(a, b, tol):
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max((x - y).abs().max().item() for x, y in zip(a, b)) <= tol


PROMPTS = [[5, 6, 7], list(range(100, 140)), [9] * 17]  # rows at different positions, across block edges


def test_fp32_steps_equal_torch_and_greedy_equals_hf(kernels):
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257, seed=3)
    ours = ours_from_hf(hf)
    toks, steps = _run(ours, True, PROMPTS)
    ref_toks, ref_steps = _run(ours, False, PROMPTS)
    assert toks == ref_toks and _same_steps(steps, ref_steps, 1e-5)
    prompt = PROMPTS[1]
    with torch.no_grad():
        greedy = hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             pad_token_id=50256, eos_token_id=None)[0, len(prompt):].tolist()
    assert list(generate(ours, prompt, 20, temperature=0)) == greedy


def test_threads_and_batch_do_not_change_a_row():
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=1000, seed=1)
    ours = ours_from_hf(hf)
    alone, _ = _run(ours, True, PROMPTS[:1])
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, n))
        together, _ = _run(ours, True, PROMPTS)
        torch.set_num_threads(1)
        one_thread, _ = _run(ours, True, PROMPTS)
    finally:
        torch.set_num_threads(n)
    assert together[0] == alone[0] and one_thread == together


def test_bf16_steps_close_to_torch_bf16(kernels):
    hf = hf_model(n_layer=2, n_head=4, n_embd=128, n_positions=128, vocab_size=1000, seed=0)
    bf16 = ours_from_hf(hf).to(torch.bfloat16)
    prompts = [[5, 6, 7], [8, 9], [1], [2, 3], [4]]  # one-token prompts and short ones: five rows decode from the second step
    for rows in (prompts[:1], prompts):  # batch 1, and the batch kernel's blocks of four rows plus one left over
        _, steps = _run(bf16, True, rows, n=8)
        _, ref = _run(bf16, False, rows, n=8)
        spread = (ref[0].max() - ref[0].min()).item()
        # the C step keeps activations in fp32 where torch rounds each op's output to bf16
        assert _same_steps(steps, ref, 0.02 * spread)


def _quantized_and_reference(quantize, n_embd=64, seed=2, layer=None):
    """A quantized model and its fp32 twin whose quantized layers are `layer(quantized_layer)` (default: the
    dequantized weights in an nn.Linear)."""
    hf = hf_model(n_layer=2, n_head=4, n_embd=n_embd, n_positions=128, vocab_size=1000, seed=seed)
    fp32 = ours_from_hf(hf)
    q = quantize(copy.deepcopy(fp32))
    ref = copy.deepcopy(fp32)
    with torch.no_grad():
        for name, m in q.named_modules():
            if hasattr(m, "dequantized"):
                parent, _, leaf = name.rpartition(".")
                setattr(ref.get_submodule(parent) if parent else ref, leaf, (layer or _dequantized_linear)(m))
    return q, ref


def _dequantized_linear(m) -> torch.nn.Linear:
    lin = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    lin.weight.data.copy_(m.dequantized())
    if m.bias is not None:
        lin.bias.data.copy_(m.bias)
    return lin


class Int8ActivationsLinear(torch.nn.Module):
    """The arithmetic of the C step's int8-activation kernels, in plain torch: each group of 32 inputs rounded to
    int8 codes times one scale (amax / 127); int4's minimum term stays on the exact inputs (sum(x) * min)."""

    def __init__(self, m):
        super().__init__()
        w = m.dequantized()  # (N, K)
        mins = m.scale_min.float()[:, :, 1:].expand(-1, -1, 32).reshape(w.shape) if hasattr(m, "scale_min") else torch.zeros_like(w)
        self.w, self.mins, self.bias = w - mins, mins, m.bias

    def forward(self, x):
        g = x.reshape(*x.shape[:-1], -1, 32)  # (..., K / 32, 32)
        amax = g.abs().amax(-1, keepdim=True)
        codes = torch.where(amax > 0, torch.round(g * (127 / amax)), torch.zeros_like(g))
        return F.linear((codes * (amax / 127)).reshape(x.shape), self.w, self.bias) + x @ self.mins.T


PROMPTS_1 = [[5], [77], [9]]  # one-token prompts: every step is a C step (torch's int4 prompt kernel rounds to bf16)


# widths: 64 (inputs 64 and 256: int4 as whole 128-input blocks, or two groups of 32 alone), 224 (896, and 224 = a
# block, then a pair of groups and one group: pack_nibbles' tail)
WIDTHS = [64, 224]


@pytest.mark.parametrize("n_embd", WIDTHS)
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4])
def test_quantized_steps_equal_their_dequantized_weights(quantize, n_embd):
    """With fp32 activations the C step multiplies by exactly the weights the quantized layer stands for."""
    q, ref = _quantized_and_reference(quantize, n_embd=n_embd)
    toks, steps = _run(q, True, PROMPTS_1, int8_activations=False)
    ref_toks, ref_steps = _run(ref, False, PROMPTS_1)
    assert toks == ref_toks and _same_steps(steps, ref_steps, 1e-5)


def _int8_activations_built() -> bool:
    q, _ = _quantized_and_reference(quantize_int8)
    return Engine(q, adapt_threads=False).native.int8_activations


@pytest.mark.parametrize("n_embd,steps", [(64, 2), (224, 1)])
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4])
def test_int8_activation_steps_equal_their_torch_arithmetic(quantize, n_embd, steps):
    """The VNNI kernels compute Int8ActivationsLinear's sum (few steps: a later one can differ by a code that
    rounds the other way after a 1e-7 difference upstream, and carry it on in the KV cache; at width 224 the
    second step's already do)."""
    if not _int8_activations_built():
        pytest.skip("this CPU has no AVX512-VNNI: the C step keeps fp32 activations")
    q, ref = _quantized_and_reference(quantize, n_embd=n_embd, layer=Int8ActivationsLinear)
    toks, got = _run(q, True, PROMPTS_1, n=steps, int8_activations=True)
    ref_toks, want = _run(ref, False, PROMPTS_1, n=steps)
    assert toks == ref_toks and _same_steps(got, want, 1e-5)


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4])
def test_int8_activations_stay_within_a_stated_tolerance(quantize):
    """The default C step (int8 activations where the CPU has VNNI) against the dequantized weights in fp32:
    every logit within 2% of the step's logit spread (measured: 0.4% int8, 1% int4), greedy tokens equal."""
    q, ref = _quantized_and_reference(quantize)
    toks, steps = _run(q, True, PROMPTS_1)
    ref_toks, ref_steps = _run(ref, False, PROMPTS_1)
    spread = min((s.max() - s.min()).item() for s in ref_steps)
    assert toks == ref_toks and _same_steps(steps, ref_steps, 0.02 * spread)


def test_turned_off_and_unreadable_models_use_torch(monkeypatch):
    from gpt2kit.inference.prepack import prepack, prepack_supported

    ours = ours_from_hf(hf_model(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=100))
    monkeypatch.setenv("GPT2KIT_NATIVE", "0")
    assert Engine(ours).native is None
    monkeypatch.delenv("GPT2KIT_NATIVE")
    assert Engine(ours).native is not None
    if prepack_supported():
        assert Engine(prepack(copy.deepcopy(ours))).native is None  # oneDNN's opaque weights: torch reads them
    col = copy.deepcopy(ours)
    col.transformer.h[0].mlp.c_fc.weight.data = col.transformer.h[0].mlp.c_fc.weight.data.t().contiguous().t()
    assert Engine(col).native is None  # column-major: not what the C step reads


def test_load_for_inference_uses_the_c_step(tiny_checkpoint):
    from gpt2kit import load_model

    for dtype in ("float32", "bfloat16", "int8", "int4"):
        m = load_model(tiny_checkpoint, dtype=dtype, inference=True)
        assert Engine(m).native is not None, dtype


def test_fp32_batch_steps_equal_torch(kernels):
    """Six rows: the batch kernel's blocks of four rows, and the rows left over."""
    ours = ours_from_hf(hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257, seed=4))
    prompts = PROMPTS + [[1, 2], list(range(300, 333)), [7] * 9]
    toks, steps = _run(ours, True, prompts, n=12)
    ref_toks, ref_steps = _run(ours, False, prompts, n=12)
    assert toks == ref_toks and _same_steps(steps, ref_steps, 1e-5)


def test_sampling_between_c_steps_runs_on_one_torch_thread(monkeypatch):
    """torch's OpenMP team, woken by sampling ops, would spin on the cores the next C step needs."""
    from gpt2kit.inference import engine as core

    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257, seed=3)
    seen, real = [], core.sample_rows
    monkeypatch.setattr(core, "sample_rows", lambda logits, rows: seen.append(torch.get_num_threads()) or real(logits, rows))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        e = Engine(ours_from_hf(hf), adapt_threads=False)
        e.add(PROMPTS[1], SamplingParams(temperature=0), max_tokens=4)
        while e.has_work:
            e.step()
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1, 1, 1]  # the prompt's step ran in torch; the decode steps in C
