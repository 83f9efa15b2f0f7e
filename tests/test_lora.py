"""LoRA: parity with peft on transformers' GPT2LMHeadModel, peft's file format both ways, merge, exact resume, errors."""
import copy
import json
import os
import subprocess
import sys
import sysconfig

import pytest
import torch

from conftest import assert_one_line_error, cli_in_process as cli, hf_model, ours_from_hf, sigkill_after_iter
from gpt2kit.data import TokenData, prepare
from gpt2kit.lora import add_lora, load_adapter_state, merge_adapter, merge_lora, read_adapter, save_adapter, trainable_params, wrap_adapter
from gpt2kit.lora_format import LoraSpec
from gpt2kit.train import configure_optimizer
from gpt2kit.train_config import TrainConfig

peft = pytest.importorskip("peft")
ALL = ("c_attn", "c_proj", "c_fc")


def peft_model(hf, r=4, alpha=8, targets=ALL, seed=1):
    """hf (a copy) wrapped by peft, with random B so that the adapter changes the output."""
    pm = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, fan_in_fan_out=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm.eval()


def peft_adapter_state(pm) -> dict:
    """peft's live adapter tensors under gpt2kit's names (transformer.h.0.attn.c_attn.lora_A.weight)."""
    return {k.removeprefix("base_model.model.").replace(".default", ""): v.detach().clone()
            for k, v in pm.named_parameters() if "lora_" in k}


def ours_like(hf, pm, r=4, alpha=8, targets=ALL):
    ours = add_lora(ours_from_hf(hf), LoraSpec(r, alpha, targets))
    load_adapter_state(ours, peft_adapter_state(pm), "peft")
    return ours.eval()


def tokens(n=2, t=24, vocab=50257, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("r, targets", [(4, ("c_attn",)), (3, ALL), (8, ("attn.c_proj", "c_fc"))])
def test_trainable_parameters_equal_peft_and_the_optimizer_holds_only_adapters(r, targets):
    hf = hf_model()
    ours = add_lora(ours_from_hf(hf), LoraSpec(r, 16, targets))
    expected = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=r, target_modules=list(targets), fan_in_fan_out=True)).get_nb_trainable_parameters()[0]
    assert trainable_params(ours) == expected
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = configure_optimizer(ours, TrainConfig(), "cpu")
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == expected


def test_loss_and_adapter_gradients_equal_peft():
    hf = hf_model()
    pm = peft_model(hf)
    ours = ours_like(hf, pm).train()
    pm.train()
    x, y = tokens(seed=1), tokens(seed=2)
    _, loss = ours(x, y)
    ref = torch.nn.functional.cross_entropy(pm(input_ids=x).logits.reshape(-1, 50257), y.reshape(-1))
    assert abs(loss.item() - ref.item()) <= 1e-5
    loss.backward()
    ref.backward()
    ref_grads = {k.removeprefix("base_model.model.").replace(".default", ""): p.grad for k, p in pm.named_parameters() if p.requires_grad}
    ours_grads = {k: p.grad for k, p in ours.named_parameters() if p.requires_grad}
    assert set(ours_grads) == set(ref_grads) and len(ours_grads) == 16
    for k, g in ours_grads.items():
        torch.testing.assert_close(g, ref_grads[k], atol=1e-5, rtol=1e-4)


def test_a_gpt2kit_adapter_loads_in_peft_with_equal_logits(tmp_path):
    from transformers import GPT2LMHeadModel

    hf = hf_model()
    hf.save_pretrained(tmp_path / "base")
    ours = ours_like(hf, peft_model(hf))
    save_adapter(ours, tmp_path / "ad", LoraSpec(4, 8, ALL, base=str(tmp_path / "base")))
    assert sorted(os.listdir(tmp_path / "ad")) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), tmp_path / "ad").eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)


def test_a_peft_adapter_loads_in_gpt2kit_with_equal_logits(tmp_path):
    from gpt2kit import load

    hf = hf_model()
    hf.save_pretrained(tmp_path / "base")
    pm = peft_model(hf, r=2, alpha=5, targets=("c_attn", "mlp.c_proj"))
    pm.save_pretrained(tmp_path / "peft")
    x = tokens()
    with torch.no_grad():
        ref = pm(input_ids=x).logits
        unmerged = wrap_adapter(ours_from_hf(hf), read_adapter(tmp_path / "peft")).eval()
        torch.testing.assert_close(unmerged(x)[0], ref, atol=1e-5, rtol=1e-5)
        merged, _ = load(tmp_path / "base", adapter=tmp_path / "peft", need_tokenizer=False)  # gpt2kit.load merges at load time
        torch.testing.assert_close(merged(x)[0], ref, atol=1e-5, rtol=1e-5)


def test_merged_weights_give_the_unmerged_logits_and_equal_peft_merge(tmp_path):
    from gpt2kit import load_model
    from gpt2kit.weights import to_hf_state_dict

    hf = hf_model()
    pm = peft_model(hf)
    ours = ours_like(hf, pm)
    x = tokens()
    with torch.no_grad():
        unmerged = ours(x)[0]
        merged = merge_lora(ours)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(x)[0], unmerged, atol=1e-5, rtol=1e-5)
    hf.save_pretrained(tmp_path / "base")
    pm.save_pretrained(tmp_path / "peft")
    ref = pm.merge_and_unload().state_dict()
    for k, v in to_hf_state_dict(merged).items():
        torch.testing.assert_close(v, ref[k], atol=1e-6, rtol=1e-5)
    # the verb: gpt2kit merge BASE ADAPTER --out DIR, and --adapter on generate
    r = cli("merge", tmp_path / "base", tmp_path / "peft", "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "merged")(x)[0], unmerged, atol=1e-5, rtol=1e-5)
    gen = ["generate", "Hello", "--temperature", 0, "--max-new-tokens", 8]
    via_adapter = cli(*gen, "--model", tmp_path / "base", "--adapter", tmp_path / "peft")
    via_merged = cli(*gen, "--model", tmp_path / "merged")
    assert via_adapter.returncode == 0 and via_adapter.stdout == via_merged.stdout
    # export --adapter: transformers loads the merged model
    from transformers import GPT2LMHeadModel

    assert cli("export", tmp_path / "base", "--adapter", tmp_path / "peft", "--format", "hf", "--out", tmp_path / "hf").returncode == 0
    with torch.no_grad():
        torch.testing.assert_close(GPT2LMHeadModel.from_pretrained(tmp_path / "hf")(input_ids=x).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_merge_adapter_refuses_an_adapter_for_another_base_shape(tmp_path):
    from gpt2kit.errors import GPT2KitError

    peft_model(hf_model(n_embd=64)).save_pretrained(tmp_path / "wide")
    with pytest.raises(GPT2KitError, match="another base shape: transformer.h.0.attn.c_attn is 96x32 here but 192x64"):
        merge_adapter(ours_from_hf(hf_model()), read_adapter(tmp_path / "wide"))


# -- training ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory):
    """A char-level corpus and a random 2-layer base model of its vocabulary."""
    from gpt2kit import save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    d = tmp_path_factory.mktemp("lora")
    text = open(os.path.join(sysconfig.get_paths()["stdlib"], "argparse.py"), encoding="utf-8").read()
    (d / "corpus.txt").write_text(text)
    prepare([str(d / "corpus.txt")], str(d / "data"), "char", progress=False)
    data = TokenData(str(d / "data"))
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=data.n_vocab)), d / "base", tokenizer=data.tokenizer())
    return d / "base", d / "data"


RUN = ["--lora-rank", 4, "--lora-alpha", 8, "--lora-targets", "c_attn,c_fc", "--lora-dropout", 0.1, "--block-size", 32,
       "--batch-size", 4, "--max-iters", 40, "--eval-interval", 10, "--eval-iters", 2, "--lr", 1e-2, "--lr-decay-iters", 40,
       "--device", "cpu", "--no-progress", "--no-plot", "--threads", 1]


def _train(*args):
    return [sys.executable, "-m", "gpt2kit", "train", *map(str, args)]


def test_lora_training_reports_trainable_params_and_saves_a_peft_adapter(base_and_data, tmp_path):
    from gpt2kit import load

    base, data = base_and_data
    flags = [*RUN]
    flags[flags.index("--max-iters") + 1] = 10
    r = cli("train", "--init-from", base, "--data", data, "--out", tmp_path / "run", *flags)
    assert r.returncode == 0, r.stderr
    # c_attn (32 -> 96) and c_fc (32 -> 128) in 2 layers at rank 4: 2 * 4 * ((32 + 96) + (32 + 128))
    assert "LoRA r=4 on c_attn,c_fc: trainable params 2,304 of " in r.stdout
    ad = read_adapter(tmp_path / "run")
    assert sorted(ad.layers) == [f"transformer.h.{i}.{m}" for i in (0, 1) for m in ("attn.c_attn", "mlp.c_fc")]
    assert ad.spec.scaling == 2.0 and ad.spec.base == str(base)
    assert any(B.abs().sum() > 0 for _, B in ad.layers.values())  # B left zero: nothing was trained
    # the base's weights are untouched by training; the adapter applies on top
    model, _ = load(base, adapter=tmp_path / "run")
    plain, _ = load(base)
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, plain.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(model.transformer.h[0].attn.c_proj.weight, plain.transformer.h[0].attn.c_proj.weight)
    state = json.loads((tmp_path / "run" / "state" / "LATEST").read_text())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "state" / state["dir"] / "model.safetensors"), "pt") as f:
        assert all(".lora_" in k for k in f.keys())  # the state holds the adapter, not the frozen base


def test_killed_lora_run_resumes_bit_identically(base_and_data, tmp_path):
    base, data = base_and_data
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--init-from", base, "--data", data, *RUN]
    r = subprocess.run(_train("--out", a, *common), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(_train("--out", b, *common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = sigkill_after_iter(proc, b, 20)
    assert 20 <= killed_at < 40, "the run finished before it could be killed"
    r = subprocess.run(_train("--resume", b), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    sa, sb = (d / "state" / "step-00000040" for d in (a, b))
    assert (sa / "model.safetensors").read_bytes() == (sb / "model.safetensors").read_bytes()  # the adapter, bit for bit
    oa, ob = (torch.load(s / "optimizer.pt", weights_only=True)["optimizer"]["state"] for s in (sa, sb))
    assert len(oa) == 8 and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])  # AdamW moments of the 8 adapter matrices
    assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()
    metrics = [[json.loads(line)["val_loss"] for line in open(d / "metrics.jsonl")] for d in (a, b)]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 5


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--lora-rank", 64], "use a rank of at most 32"),
    (["--lora-rank", -1], "lora_rank must be >= 0"),
    (["--lora-rank", 4, "--lora-targets", "q_proj"], "unknown layer 'q_proj'; GPT-2's are c_attn, c_proj, c_fc"),
])
def test_bad_lora_training_flags_are_one_line_errors_before_anything_is_written(base_and_data, tmp_path, flags, needle):
    base, data = base_and_data
    r = cli("train", "--init-from", base, "--data", data, "--out", tmp_path / "run", "--device", "cpu", *flags)
    assert_one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


def test_lora_from_scratch_is_refused():
    r = cli("train", "--lora-rank", 4, "--data", "shakespeare")
    assert_one_line_error(r, "lora_rank adapts a trained model: set init_from")


def test_bad_adapters_are_one_line_errors_naming_the_fix(tiny_checkpoint, tmp_path):
    hf = hf_model(n_embd=64)
    peft_model(hf).save_pretrained(tmp_path / "wide")
    gen = ["generate", "Hi", "--max-new-tokens", 2, "--model", tiny_checkpoint, "--adapter"]
    assert_one_line_error(cli(*gen, tmp_path / "wide"), "is for another base shape")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli(*gen, tmp_path / "empty"), "holds no adapter_config.json; give a LoRA adapter dir")
    assert_one_line_error(cli(*gen, tmp_path / "nope"), f"--adapter {tmp_path / 'nope'} is not a directory")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text((tmp_path / "wide" / "adapter_config.json").read_text())
    assert_one_line_error(cli(*gen, tmp_path / "noweights"), "but no adapter_model.safetensors")
    cfg = json.loads((tmp_path / "wide" / "adapter_config.json").read_text())
    (tmp_path / "wide" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    assert_one_line_error(cli(*gen, tmp_path / "wide"), "not rank r=8 of adapter_config.json")
    (tmp_path / "wide" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    assert_one_line_error(cli(*gen, tmp_path / "wide"), "use_dora=True is a peft variant gpt2kit does not apply")
    r = cli("generate", "Hi", "--model", tmp_path / "wide")  # the adapter given as the model
    assert_one_line_error(r, f"is a LoRA adapter, not a model; load its base model with --adapter {tmp_path / 'wide'}")
    r = cli("generate", "Hi", "--model", tiny_checkpoint, "--backend", "numpy", "--adapter", tmp_path / "wide")
    assert_one_line_error(r, "--backend numpy cannot apply --adapter; use --backend torch")
    r = cli("serve", "--model", tiny_checkpoint, "--adapter", tmp_path / "empty", "--no-page", "--port", 0)
    assert_one_line_error(r, "holds no adapter_config.json")  # refused before the server starts


@pytest.mark.slow  # two torchrun processes: about 40 s on a busy 2-core machine
def test_lora_ddp_two_processes_equal_one_with_double_accumulation(base_and_data, tmp_path):
    base, data = base_and_data
    flags = ["--init-from", base, "--data", data, *RUN, "--grad-accum", 2, "--lora-dropout", 0.0]
    flags[flags.index("--max-iters") + 1] = 20
    one = subprocess.run(_train("--out", tmp_path / "one", *flags), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2kit",
                          "train", "--out", str(tmp_path / "two"), *map(str, flags)], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    m1, m2 = ([json.loads(line) for line in open(d / "metrics.jsonl")] for d in (tmp_path / "one", tmp_path / "two"))
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [0, 10, 20]
    for r1, r2 in zip(m1, m2):
        assert abs(r1["train_loss"] - r2["train_loss"]) <= 1e-5 and abs(r1["val_loss"] - r2["val_loss"]) <= 1e-5
    a1, a2 = (read_adapter(tmp_path / d) for d in ("one", "two"))
    for module, (A, B) in a1.layers.items():
        torch.testing.assert_close(a2.layers[module][0], A, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a2.layers[module][1], B, atol=1e-5, rtol=1e-4)
