"""numpy_gpt2 against the torch model and against transformers' GPT2LMHeadModel, on random weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2kit import numpy_gpt2 as ng
from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.generation import generate
from gpt2kit.model import GPT
from gpt2kit.sampling import SamplingParams, apply_repetition_penalty, filter_logits
from gpt2kit.tokenization import get_tokenizer
from gpt2kit.weights import save_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHAPES = {
    # GPT-2's own layout (biases, unpadded vocab)
    "bias": GPTConfig(block_size=64, vocab_size=101, n_layer=2, n_head=2, n_embd=32),
    # nanoGPT-style: no biases, vocab padded 97 -> 128, short context so generation crops
    "nobias-padded": GPTConfig(block_size=32, vocab_size=97, n_layer=3, n_head=4, n_embd=48, bias=False, pad_vocab_multiple=64),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from the init (LN gains != 1, biases != 0), so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(params=sorted(SHAPES))
def pair(request, tmp_path):
    """(torch GPT, NumpyGPT2 loaded from the gpt2kit checkpoint that model was saved to)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPES[request.param].to_dict())).eval()
    _randomize(model, seed=1)
    save_model(model, tmp_path / "ck")
    return model, ng.load(tmp_path / "ck")


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None])[0][0].numpy()  # (T, V)


# -- torch-free ------------------------------------------------------------------------------

def test_import_does_not_load_torch():
    r = _run(["-c", "import sys, gpt2kit.numpy_gpt2; print('torch' in sys.modules)"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# -- logits ----------------------------------------------------------------------------------

def test_logits_match_torch(pair):
    model, npm = pair
    cfg = model.config
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, cfg.block_size)  # a full context
    ref = _torch_logits(model, ids)
    out = ng.gpt2(ids, *npm)
    assert out.shape == (cfg.block_size, cfg.vocab_size) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(ref).max() > 1.0  # the weights are not near-zero: the comparison has teeth


def test_kv_cache_logits_match_torch(pair):
    model, npm = pair
    cfg = model.config
    T, P = cfg.block_size, 7
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, T)
    ref = _torch_logits(model, ids)  # (T, V) no cache
    cache = ng.KVCache(cfg, T)
    steps = [ng.gpt2(ids[:P], *npm, cache=cache)] + [ng.gpt2(ids[t : t + 1], *npm, cache=cache) for t in range(P, T)]
    assert cache.pos == T
    assert np.abs(np.concatenate(steps) - ref).max() < 1e-4  # (the torch engine's cache: tests/test_engine.py)


def test_greedy_tokens_match_torch_over_30_steps(pair):
    model, npm = pair
    cfg = model.config
    prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, 10).tolist()  # 10 + 30 > 32: one shape crops
    want = list(generate(model, prompt, 30, temperature=0.0))
    got = list(ng.generate(npm, prompt, 30, temperature=0.0))
    assert len(got) == 30
    assert got == want


def test_padded_vocab_is_sliced(pair):
    model, npm = pair
    assert npm.params["wte"].shape == (model.config.vocab_size, model.config.n_embd)


# -- HF directories --------------------------------------------------------------------------

def test_hf_dir_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_positions=48, vocab_size=113, n_layer=2, n_head=4, n_embd=32, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    _randomize(hf, seed=3)
    hf.save_pretrained(tmp_path)
    npm = ng.load(tmp_path)
    assert npm.config.n_layer == 2 and npm.config.block_size == 48 and npm.config.vocab_size == 113
    ids = np.random.default_rng(3).integers(0, 113, 48)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)[None]).logits[0].numpy()  # (T, V)
    assert np.abs(ng.gpt2(ids, *npm) - ref).max() < 1e-4
    cache = ng.KVCache(npm.config, 48)
    steps = [ng.gpt2(ids[:5], *npm, cache=cache)] + [ng.gpt2(ids[t : t + 1], *npm, cache=cache) for t in range(5, 48)]
    assert np.abs(np.concatenate(steps) - ref).max() < 1e-4


# -- sampling --------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 50, None), (1.3, None, 0.9), (0.8, 20, 0.5), (1.0, 1, None)])
def test_filtered_distribution_matches_torch_sampler(temperature, top_k, top_p):
    logits = np.random.default_rng(4).normal(0, 3, (3, 500)).astype(np.float32)
    want = torch.softmax(filter_logits(torch.from_numpy(logits), SamplingParams(temperature, top_k, top_p)), dim=-1).numpy()
    got = np.stack([ng.next_token_probs(row, temperature, top_k, top_p) for row in logits])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_repetition_penalty_matches_torch():
    logits = np.random.default_rng(5).normal(0, 2, 200).astype(np.float32)
    seen = np.zeros(200, dtype=bool)
    seen[[3, 17, 50, 199]] = True
    want = apply_repetition_penalty(torch.from_numpy(logits)[None], torch.from_numpy(seen)[None], 1.7)[0]
    # greedy after the penalty picks the torch-penalized argmax; check the whole vector through temperature=1 probs
    got = ng.next_token_probs(np.where(seen, np.where(logits > 0, logits / 1.7, logits * 1.7), logits))
    np.testing.assert_allclose(got, torch.softmax(want.double(), -1).numpy(), atol=1e-6)
    assert ng.sample(logits, None, 0.0, repetition_penalty=1.7, seen=seen) == int(want.argmax())


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [ng.sample(logits, rng) for _ in range(50)]

    assert draw(7) == draw(7) != draw(8)
    rng = np.random.default_rng(8)
    counts = np.bincount([ng.sample(logits, rng, top_p=0.7) for _ in range(20000)], minlength=4) / 20000
    # top_p=0.7 keeps {0.5, 0.3}: renormalised to 0.625 / 0.375, the rest never drawn
    np.testing.assert_allclose(counts, [0.625, 0.375, 0.0, 0.0], atol=0.015)


def test_bad_sampling_settings_are_one_line_errors(pair):
    _, npm = pair
    for kw in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 1.5}, {"repetition_penalty": 0.0}):
        with pytest.raises(GPT2KitError):
            next(ng.generate(npm, [1, 2], 3, **kw))
    with pytest.raises(GPT2KitError, match="empty"):
        next(ng.generate(npm, [], 3))
    with pytest.raises(GPT2KitError, match="prompt ids"):
        next(ng.generate(npm, [npm.config.vocab_size], 3))


# -- loading errors --------------------------------------------------------------------------

def test_load_errors(pair, tmp_path):
    model, _ = pair
    with pytest.raises(GPT2KitError, match="model not found"):
        ng.load(tmp_path / "nope")
    ck = tmp_path / "ck"
    cfg = json.loads((ck / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model": {**cfg["model"], "n_layer": cfg["model"]["n_layer"] + 1}}))
    (bad / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes())
    with pytest.raises(GPT2KitError, match="missing"):
        ng.load(bad)
    (bad / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:100])
    with pytest.raises(GPT2KitError, match="cannot read"):
        ng.load(bad)
    os.remove(bad / "model.safetensors")
    with pytest.raises(GPT2KitError, match="no model.safetensors"):
        ng.load(bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GPT2KitError, match="neither"):
        ng.load(bad)


# -- the script and the CLI backend ------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A small random model over GPT-2's BPE vocabulary, saved with its tokenizer."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, pad_vocab_multiple=64)).eval()
    _randomize(model, seed=5)
    tok = get_tokenizer("gpt2")
    d = tmp_path_factory.mktemp("gpt2ck")
    save_model(model, d, tokenizer=tok)
    return model, tok, d


def test_script_prints_the_greedy_continuation(gpt2_checkpoint):
    model, tok, d = gpt2_checkpoint
    prompt = "Alan Turing theorized that computers"
    want = tok.decode(list(generate(model, tok.encode(prompt), 12, temperature=0.0, stop_tokens=[tok.eot_token])))
    r = _run(["-m", "gpt2kit.numpy_gpt2", prompt, "--n-tokens", "12", "--model", str(d)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + want + "\n"


def test_cli_numpy_backend_matches_torch_without_importing_torch(gpt2_checkpoint):
    model, tok, d = gpt2_checkpoint
    prompt = "Hello there"
    code = (
        "import sys\nfrom gpt2kit.cli import main\n"
        f"rc = main(['generate', {prompt!r}, '--model', {str(d)!r}, '--backend', 'numpy', '--temperature', '0', '--max-new-tokens', '15'])\n"
        "print('TORCH', 'torch' in sys.modules)\nsys.exit(rc)"
    )
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr
    text, flag = r.stdout.rsplit("TORCH ", 1)
    assert flag.strip() == "False"
    want = tok.decode(list(generate(model, tok.encode(prompt), 15, temperature=0.0, stop_tokens=[tok.eot_token])))
    assert text == prompt + want + "\n"


def test_cli_numpy_backend_rejects_device_flags(gpt2_checkpoint, capsys):
    from gpt2kit.cli import main

    _, _, d = gpt2_checkpoint
    assert main(["generate", "hi", "--model", str(d), "--backend", "numpy", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gpt2kit generate: error: --backend numpy runs float32 on the CPU; drop --device/--dtype or use --backend torch"


def test_numpy_generate_checks_seed_and_refuses_nan_weights(pair):
    """The NumPy sampler is total like the torch one: no out-of-range seed, no id drawn from NaN logits."""
    _, m = pair
    with pytest.raises(GPT2KitError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        list(ng.generate(m, [1, 2], 3, seed=-5))
    def nan_like(x):
        if isinstance(x, np.ndarray):
            return np.full_like(x, np.nan)
        if isinstance(x, dict):
            return {k: nan_like(v) for k, v in x.items()}
        return [nan_like(v) for v in x] if isinstance(x, (list, tuple)) else x

    nan = ng.NumpyGPT2(nan_like(m.params), m.config)
    with pytest.raises(GPT2KitError, match="no finite logits"):
        list(ng.generate(nan, [1, 2], 3, temperature=0.8, seed=1))
