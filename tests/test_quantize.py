"""Fast CPU inference paths against their references: int8 and int4 weights, bf16, oneDNN-prepacked weights, the thread governor."""
import copy

import torch

from conftest import hf_model, ours_from_hf
from gpt2kit import generate
from gpt2kit.quantize import quantize_int8


def _logits(model, idx):
    with torch.no_grad():
        return model(idx)[0].float()


def _assert_cached_decode_equals_forward(q, idx, n=10):
    """Greedy decode on the engine (paged KV cache) picks what a full forward of the same quantized model picks."""
    toks = list(generate(q, idx[0].tolist(), n, temperature=0))
    seq = idx[0].tolist()
    for _ in range(n):
        seq.append(int(_logits(q, torch.tensor([seq]))[0, -1].argmax()))
    assert toks == seq[idx.shape[1]:]


def test_int8_within_stated_tolerance_and_cache_consistent():
    hf = hf_model(n_layer=2, n_head=4, n_embd=128, n_positions=128, vocab_size=50257, seed=0)
    fp32 = ours_from_hf(hf)
    q = quantize_int8(copy.deepcopy(fp32))
    from gpt2kit.quantize import Int8Linear

    assert all(isinstance(m, Int8Linear) for m in (q.transformer.h[0].mlp.c_fc, q.transformer.h[1].attn.c_attn, q.lm_head))
    assert q.lm_head.weight.dtype == torch.int8
    idx = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = _logits(fp32, idx), _logits(q, idx)
    # stated tolerance: int8 keeps every logit within 5% of the fp32 logit spread on random GPT-2 weights
    assert (a - b).abs().max().item() <= 0.05 * (a.max() - a.min()).item()
    _assert_cached_decode_equals_forward(q, idx)


def test_int8_kernel_equals_dequantized_reference():
    from gpt2kit.quantize import Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    q8 = Int8Linear(lin)
    w = q8.dequantized()
    assert (w - lin.weight).abs().max() <= q8.scale.max() / 2 + 1e-7  # round to nearest step
    x = torch.randn(3, 5, 96)
    assert (q8(x) - (x @ w.t() + lin.bias)).abs().max().item() < 1e-5


def test_bf16_weights_close_to_fp32():
    hf = hf_model(n_layer=2, n_head=4, n_embd=128, n_positions=128, vocab_size=1000, seed=0)
    fp32 = ours_from_hf(hf)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    idx = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = _logits(fp32, idx), _logits(bf16, idx)
    assert (a - b).abs().max().item() <= 0.03 * (a.max() - a.min()).item()


def test_load_model_int8(tiny_checkpoint):
    from gpt2kit import load_model

    m = load_model(tiny_checkpoint, dtype="int8")
    ref = load_model(tiny_checkpoint)
    idx = torch.tensor([[1, 2, 3, 4]])
    a, b = _logits(ref, idx), _logits(m, idx)
    assert (a - b).abs().max().item() <= 0.05 * (a.max() - a.min()).item()


# -- int4 ---------------------------------------------------------------------------------------

def test_int4_kernel_equals_dequantized_reference():
    from gpt2kit.quantize import Int4Linear, int4_groups

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 50, bias=True)  # 50 rows: padded to 64 inside, sliced off
    q4 = Int4Linear(lin, group=32)
    q, scale, lo = int4_groups(lin.weight.detach(), 32)
    w = (q.view(50, 4, 32).float() * scale + lo).view(50, 128)  # the weight int4 stands for
    assert (w - lin.weight).abs().max() <= scale.max() / 2 + 1e-6  # round to nearest step
    x = torch.randn(3, 7, 128)
    ref = x.to(torch.bfloat16).float() @ w.t() + lin.bias  # the kernel takes bf16 activations
    out = q4(x)
    assert out.shape == (3, 7, 50) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 0.01 * ref.abs().max().item()  # bf16 output rounding


def test_quantizing_in_row_chunks_equals_quantizing_whole(monkeypatch):
    """Layers are quantized CHUNK_ROWS rows at a time (bounded load memory); every buffer equals one whole-matrix pass."""
    from gpt2kit import quantize
    from gpt2kit.quantize import Int4Linear, Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 150, bias=True)  # 150 rows: chunks of 64, 64 and a 22-row tail padded to 32
    for make in (Int8Linear, Int4Linear):
        whole = make(lin).state_dict()
        monkeypatch.setattr(quantize, "CHUNK_ROWS", 64)
        chunked = make(lin).state_dict()
        monkeypatch.setattr(quantize, "CHUNK_ROWS", 4096)
        assert whole.keys() == chunked.keys()
        for k in whole:
            assert whole[k].dtype == chunked[k].dtype and torch.equal(whole[k], chunked[k]), (make.__name__, k)


def test_int4_within_stated_tolerance_and_cache_consistent():
    from gpt2kit.quantize import Int4Linear, quantize_int4

    hf = hf_model(n_layer=2, n_head=4, n_embd=128, n_positions=128, vocab_size=50257, seed=0)
    fp32 = ours_from_hf(hf)
    q = quantize_int4(copy.deepcopy(fp32))
    assert all(isinstance(m, Int4Linear) for m in (q.transformer.h[0].attn.c_attn, q.transformer.h[1].mlp.c_proj, q.lm_head))
    idx = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = _logits(fp32, idx), _logits(q, idx)
    # stated tolerance: int4 (groups of 32) keeps every logit within 15% of the fp32 logit spread on random weights
    assert (a - b).abs().max().item() <= 0.15 * (a.max() - a.min()).item()
    _assert_cached_decode_equals_forward(q, idx)


# -- oneDNN-prepacked float weights (load_model(inference=True)) ------------------------------

def test_prepacked_fp32_equals_hf_logits_and_greedy():
    from gpt2kit.inference.prepack import PackedLinear, prepack, prepack_supported

    if not prepack_supported():
        import pytest

        pytest.skip("this torch build has no oneDNN")
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257, seed=3)
    ours = prepack(ours_from_hf(hf), head=False)  # what load_model(inference=True) does without the C step
    assert isinstance(ours.transformer.h[1].mlp.c_fc, PackedLinear)
    assert ours.lm_head.weight is ours.transformer.wte.weight  # fp32 keeps the head tied: one copy in memory
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(idx).logits
    assert (_logits(ours, idx) - ref).abs().max().item() < 1e-5
    prompt = idx[0, :5].tolist()
    with torch.no_grad():
        greedy = hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             pad_token_id=50256, eos_token_id=None)[0, 5:].tolist()
    assert list(generate(ours, prompt, 20, temperature=0)) == greedy
    steps = list(generate(ours, [prompt, idx[1, :9].tolist()], 20, temperature=0))  # batch of 2: the M > 1 kernel
    assert [s[0] for s in steps] == greedy


def test_prepacked_bf16_equals_unpacked_bf16():
    from gpt2kit.inference.prepack import PackedLinear, prepack, prepack_supported

    if not prepack_supported():
        import pytest

        pytest.skip("this torch build has no oneDNN")
    hf = hf_model(n_layer=2, n_head=4, n_embd=128, n_positions=128, vocab_size=1000, seed=0)
    plain = ours_from_hf(hf).to(torch.bfloat16)
    packed = prepack(copy.deepcopy(plain))
    assert isinstance(packed.lm_head, PackedLinear) and packed.transformer.wte.weight.dtype == torch.bfloat16
    idx = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = _logits(plain, idx), _logits(packed, idx)
    assert (a - b).abs().max().item() <= 0.01 * (a.max() - a.min()).item()  # both bf16; only summation order differs


def test_inference_models_refuse_to_save(tiny_checkpoint, tmp_path):
    import pytest

    from gpt2kit import load_model, save_model
    from gpt2kit.errors import GPT2KitError
    from gpt2kit.inference.prepack import prepack

    for m in (prepack(load_model(tiny_checkpoint)), load_model(tiny_checkpoint, dtype="int4"), load_model(tiny_checkpoint, dtype="int8")):
        with pytest.raises(GPT2KitError, match="laid out for inference"):
            save_model(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_model_int4_and_inference(tiny_checkpoint):
    from gpt2kit import load_model

    ref = load_model(tiny_checkpoint)
    idx = torch.tensor([[1, 2, 3, 4]])
    a = _logits(ref, idx)
    assert (_logits(load_model(tiny_checkpoint, inference=True), idx) - a).abs().max().item() < 1e-5
    b = _logits(load_model(tiny_checkpoint, dtype="int4"), idx)
    assert (a - b).abs().max().item() <= 0.15 * (a.max() - a.min()).item()


# -- thread governor ----------------------------------------------------------------------------

def test_thread_governor_leaves_the_busy_core(monkeypatch):
    from gpt2kit.inference import threads

    clock = {"t": 0.0, "machine": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "_machine_busy", lambda: clock["machine"])
    monkeypatch.setattr(threads, "_own_busy", lambda: clock["own"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # an earlier test may have left another count
        g = threads.ThreadGovernor(interval=0.5, max_threads=2)
        g.cores = 2

        def second(own, others, steps=10):  # a second of decode steps, each tick 1 / steps s after the last
            for _ in range(steps):
                clock["t"] += 1.0 / steps
                clock["own"] += own / steps
                clock["machine"] += (own + others) / steps
                g.tick()
            return torch.get_num_threads()

        assert second(2.0, 0.05) == 2  # quiet: both cores
        assert second(1.1, 0.9) == 1  # a CPU-bound neighbour: leave it its core
        assert second(1.0, 1.0) == 1
        assert second(1.0, 0.0) == 2  # it left
        clock["t"] += 0.1
        g.tick()  # within the interval: nothing is read
        assert g.changes == 2
        assert second(0.0, 2.0, steps=1) == 2  # idle while others ran: a new window starts, nothing changes
        assert second(1.9, 0.1) == 2 and g.changes == 2  # the window after the pause is quiet
        second(0.0, 0.0, steps=1)  # another pause
        clock["t"] += 0.15
        clock["own"] += 0.15
        clock["machine"] += 0.3
        g.tick()  # a neighbour still busy: the short first window (interval / 4) already sees it
        assert torch.get_num_threads() == 1 and g.changes == 3
    finally:
        torch.set_num_threads(before)


def test_generate_and_score_give_back_the_thread_count(monkeypatch):
    from gpt2kit.inference import threads
    from gpt2kit.inference.engine import Engine

    ours = ours_from_hf(hf_model(seed=1))
    before = torch.get_num_threads()
    monkeypatch.setenv("GPT2KIT_ADAPT_THREADS", "1")  # conftest turns the governor off for the suite
    monkeypatch.setattr(threads, "_governor", None)
    monkeypatch.setattr(threads.ThreadGovernor, "tick", lambda self: torch.set_num_threads(1))  # as beside a busy neighbour
    try:
        assert len(list(generate(ours, [1, 2, 3], 3, temperature=0))) == 3
        assert torch.get_num_threads() == before
        engine = Engine(ours)
        assert engine.threads is not None
        engine.score([[1, 2, 3, 4]])
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
