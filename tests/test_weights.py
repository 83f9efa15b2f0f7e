"""Weight loading: HF dirs (safetensors and .bin), the hub cache offline, gpt2kit checkpoints, bad files."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import hf_model, ours_from_hf
from gpt2kit import load_model, save_model
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenization import get_tokenizer


def _same_logits(a, b, tol=1e-5):  # load_model stores weights column-major: other kernels, same math
    idx = torch.tensor([[464, 3290, 318, 257, 1332]])
    with torch.no_grad():
        return (a(idx)[0] - b(idx)[0]).abs().max().item() <= tol


def test_load_hf_dir_safetensors_and_bin(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "st")
    m = load_model(tmp_path / "st")
    assert _same_logits(m, ours_from_hf(hf))
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert (m(idx)[0] - hf(idx).logits).abs().max() <= 1e-5
    # pytorch_model.bin: plain state dict, read with weights_only=True
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert _same_logits(load_model(tmp_path / "bin"), m)


def test_checkpoint_roundtrip_dedups_tied_embedding(tmp_path):
    from safetensors import safe_open

    hf = hf_model()
    m = ours_from_hf(hf)
    save_model(m, tmp_path / "ck", tokenizer=get_tokenizer("gpt2"), meta={"note": "x"})
    with safe_open(tmp_path / "ck" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    m2 = load_model(tmp_path / "ck")
    assert m2.lm_head.weight is m2.transformer.wte.weight
    assert _same_logits(m, m2)
    assert get_tokenizer(str(tmp_path / "ck")).encode("hello world") == [31373, 995]
    assert json.loads((tmp_path / "ck" / "meta.json").read_text()) == {"note": "x"}
    assert load_model(tmp_path / "ck", dtype="bfloat16").transformer.wte.weight.dtype == torch.bfloat16


def test_bad_paths_and_corrupt_files(tmp_path):
    with pytest.raises(GPT2KitError, match="model not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GPT2KitError, match="config.json"):
        load_model(tmp_path / "empty")
    save_model(ours_from_hf(hf_model()), tmp_path / "ck")
    st = tmp_path / "ck" / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(GPT2KitError, match="truncated or corrupt"):
        load_model(tmp_path / "ck")
    st.write_bytes(b"\x00" * 100)
    with pytest.raises(GPT2KitError, match="truncated or corrupt"):
        load_model(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(GPT2KitError, match="not valid JSON"):
        load_model(tmp_path / "ck")


def test_mismatched_shapes_named(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["n_embd"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GPT2KitError, match="shape"):
        load_model(tmp_path / "m")


def _fake_hub_cache(root, hf):
    """The HF hub cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "models--openai-community--gpt2"
    snap = repo / "snapshots" / commit
    hf.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_hub_name_loads_from_cache_offline(tmp_path):
    hf = hf_model()
    _fake_hub_cache(tmp_path, hf)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = ("import gpt2kit, torch; m = gpt2kit.load_model('gpt2'); "
            "print(list(gpt2kit.generate(m, [464, 3290], 8, temperature=0)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(list(__import__("gpt2kit").generate(ours_from_hf(hf), [464, 3290], 8, temperature=0)))
    # and the CLI: `gpt2kit download gpt2` prints the snapshot dir; a missing release is a one-line error
    out = subprocess.run([sys.executable, "-m", "gpt2kit", "download", "gpt2"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("0123456789abcdef0123456789abcdef01234567")
    out = subprocess.run([sys.executable, "-m", "gpt2kit", "download", "gpt2-large"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.network
def test_real_gpt2_golden_greedy():
    model = load_model("gpt2")
    out = [464, 3290] + list(__import__("gpt2kit").generate(model, [464, 3290], 18, temperature=0))
    assert out == [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262, 13, 198, 198, 464, 3290]


def test_column_major_read_equals_plain_read_without_a_transposed_copy(tiny_checkpoint, tmp_path):
    import os

    import pytest

    from gpt2kit.errors import GPT2KitError
    from gpt2kit.weights import read_safetensors

    path = os.path.join(tiny_checkpoint, "model.safetensors")
    plain = read_safetensors(path)
    cols = read_safetensors(path, ("transformer.wte.weight", "transformer.h.0.mlp.c_fc.weight"))
    assert set(plain) == set(cols) and all(torch.equal(plain[k], cols[k]) for k in plain)
    assert cols["transformer.wte.weight"].t().is_contiguous() and not cols["transformer.wte.weight"].is_contiguous()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(open(path, "rb").read()[:-100])
    with pytest.raises(GPT2KitError, match="truncated"):
        read_safetensors(str(bad), ("transformer.wte.weight",))
