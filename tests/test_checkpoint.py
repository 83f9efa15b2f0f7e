"""The torch-free checkpoint module: no torch on import, the NumPy loader works with torch absent,
one safetensors fallback for versions without backend=, and written files get the usual mode."""
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt2kit import checkpoint


def _python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], check=False, capture_output=True, text=True, timeout=600)


def test_import_does_not_load_torch():
    r = _python("import gpt2kit.checkpoint, gpt2kit.numpy_gpt2, sys; assert 'torch' not in sys.modules, 'torch imported'")
    assert r.returncode == 0, r.stderr


def test_numpy_backend_loads_a_checkpoint_with_torch_blocked(tiny_checkpoint, tmp_path):
    """With `import torch` made to fail, numpy_gpt2 still reads the checkpoint: its logits equal torch's."""
    import torch

    from gpt2kit import load_model

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np\n"
        "from gpt2kit.numpy_gpt2 import gpt2, load\n"
        "params, config = load(sys.argv[1])\n"
        "np.save(sys.argv[2], gpt2(np.array([1, 2, 3]), params, config))\n"
    )
    r = _python(code, tiny_checkpoint, tmp_path / "logits.npy")
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        ref = load_model(tiny_checkpoint)(torch.tensor([[1, 2, 3]]))[0][0].numpy()
    ours = np.load(tmp_path / "logits.npy")
    assert ours.shape == (3, 50257)
    np.testing.assert_allclose(ours, ref[:, :50257], atol=1e-4)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_safetensors_without_backend_argument(tiny_checkpoint, monkeypatch, framework):
    """safetensors < 0.8 has no backend= (pyproject allows >= 0.4): both frameworks fall back to the plain call."""
    import importlib

    mod = importlib.import_module(f"safetensors.{framework}")
    path = str(tiny_checkpoint / checkpoint.WEIGHTS_FILE)
    want = mod.load_file(path)
    real = mod.load_file
    monkeypatch.setattr(mod, "load_file", lambda filename: real(filename))  # an old signature: backend= is a TypeError
    got = checkpoint.read_safetensors(path, framework)
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.array_equal(np.asarray(got[k]), np.asarray(want[k]))


def test_saved_files_get_the_umask_mode(tmp_path):
    import torch

    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT
    from gpt2kit.tokenization import CharTokenizer

    torch.manual_seed(0)
    save_model(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=3)), tmp_path / "m",
               tokenizer=CharTokenizer(list("ab")), meta={"x": 1})
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert set(modes) == {"model.safetensors", "config.json", "meta.json", "tokenizer.json"}
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


def test_hf_keys_map_to_gpt2kit_keys():
    assert checkpoint.gpt2kit_key("transformer.h.0.attn.c_attn.bias") == "transformer.h.0.attn.c_attn.bias"
    assert checkpoint.gpt2kit_key("h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"  # GPT2Model has no prefix
    assert checkpoint.gpt2kit_key("h.0.attn.bias") is None  # the causal-mask buffer
    assert checkpoint.gpt2kit_key("lm_head.weight") is None  # tied to wte
