"""The C decode step (inference/native.py) against the torch model it stands in for."""
import copy

import pytest
import torch

from conftest import hf_model, ours_from_hf
from gpt2kit import generate
from gpt2kit.inference import native
from gpt2kit.inference.engine import Engine
from gpt2kit.quantize import quantize_int4, quantize_int8
from gpt2kit.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not native.available(), reason="the C decode step was not built (no C compiler at install)")


def _run(model, use_native, prompts, n=24, **engine_kw):
    """Greedy decode of every prompt at once; returns the tokens and the logits of every decode step."""
    e = Engine(model, native=use_native, adapt_threads=False, **engine_kw)
    assert (e.native is not None) == use_native
    rows = [e.add(p, SamplingParams(temperature=0), max_tokens=n) for p in prompts]
    steps, forward = [], e._forward

    def record(work):
        logits, at = forward(work)
        if all(k == 1 for _, k in work):
            steps.append(logits.clone())
        return logits, at

    e._forward = record
    while e.has_work:
        e.step()
    return [r.tokens for r in rows], steps


def _same_steps(a, b, tol):
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max((x - y).abs().max().item() for x, y in zip(a, b)) <= tol


PROMPTS = [[5, 6, 7], list(range(100, 140)), [9] * 17]  # rows at different positions, across block edges


def test_fp32_steps_equal_torch_and_greedy_equals_hf():
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


def test_bf16_steps_close_to_torch_bf16():
    hf = hf_model(n_layer=2, n_head=4, n_embd=128, n_positions=128, vocab_size=1000, seed=0)
    bf16 = ours_from_hf(hf).to(torch.bfloat16)
    _, steps = _run(bf16, True, PROMPTS[:1], n=8)
    _, ref = _run(bf16, False, PROMPTS[:1], n=8)
    spread = (ref[0].max() - ref[0].min()).item()
    # the C step keeps activations in fp32 where torch rounds each op's output to bf16
    assert _same_steps(steps, ref, 0.02 * spread)


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4])
def test_quantized_steps_equal_their_dequantized_weights(quantize):
    """The C step multiplies by exactly the weights the quantized layer stands for (dequantized())."""
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=1000, seed=2)
    fp32 = ours_from_hf(hf)
    q = quantize(copy.deepcopy(fp32))
    ref = copy.deepcopy(fp32)
    ref.lm_head = torch.nn.Linear(64, q.lm_head.out_features, bias=False)
    with torch.no_grad():
        for name, layer in q.named_modules():
            if hasattr(layer, "dequantized"):
                ref.get_submodule(name).weight.copy_(layer.dequantized())
    prompts = [[5], [77], [9]]  # one-token prompts: every step is a C step (torch's int4 prompt kernel rounds to bf16)
    toks, steps = _run(q, True, prompts)
    ref_toks, ref_steps = _run(ref, False, prompts)
    assert toks == ref_toks and _same_steps(steps, ref_steps, 1e-5)


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
