"""Training: gradients equal transformers', the loop equals a plain torch loop, exact resume, DDP."""
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time

import pytest
import torch

from conftest import cli_in_process, hf_model, ours_from_hf, sigkill_after_iter
from gpt2kit.data import TokenData, prepare
from gpt2kit.train import Trainer, configure_optimizer, init_model, lr_at, resume, resume_config, train
from gpt2kit.train_config import TrainConfig, make_config, preset_names
from gpt2kit.weights import TRANSPOSED

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, dropout=0.0, eval_iters=2,
            lr=1e-2, min_lr=1e-3, warmup_iters=3, lr_decay_iters=40, device="cpu", progress=False, plot=False, threads=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    text = open(os.path.join(sysconfig.get_paths()["stdlib"], "argparse.py"), encoding="utf-8").read()
    (d / "corpus.txt").write_text(text)
    prepare([str(d / "corpus.txt")], str(d / "prepared"), "char", progress=False)
    return str(d / "prepared")


def test_loss_and_every_gradient_match_transformers():
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500, seed=1)
    hf.train()
    ours = ours_from_hf(hf).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 500, (3, 40), generator=g)
    y = torch.randint(0, 500, (3, 40), generator=g)
    _, loss = ours(x, y)
    ref = torch.nn.functional.cross_entropy(hf(x).logits.reshape(-1, 500), y.reshape(-1))
    assert abs(loss.item() - ref.item()) <= 1e-5
    loss.backward()
    ref.backward()
    ours_grads = dict(ours.named_parameters())
    n = 0
    for name, p in hf.named_parameters():
        key = name if name.startswith("transformer.") else None
        if key is None:
            continue  # lm_head is tied to wte: the same parameter
        gref = p.grad.t() if key.endswith(TRANSPOSED) else p.grad
        torch.testing.assert_close(ours_grads[key].grad, gref, atol=1e-5, rtol=1e-4)
        n += 1
    assert n == len(ours_grads)  # every parameter compared


def test_ten_adamw_steps_equal_a_plain_torch_loop(data_dir, tmp_path):
    cfg = TrainConfig(**TINY, data=data_dir, out=str(tmp_path / "run"), max_iters=10, log_interval=1, eval_interval=100)
    result = train(cfg, log=lambda *a: None)
    # the reference: the same init and batches, torch.optim.AdamW's plain for-loop kernel
    data = TokenData(data_dir)
    model = init_model(cfg, data.n_vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False, fused=False)
    losses = []
    for it in range(10):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(it, cfg)
        x, y = data.batch("train", cfg.batch_size, cfg.block_size, (cfg.seed, it, 0))
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert [i for i, _ in result.train_losses] == list(range(1, 11))
    for (_, got), want in zip(result.train_losses, losses):
        assert abs(got - want) <= 1e-5
    assert losses[-1] < losses[0]


def test_lr_schedule_and_optimizer_groups():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    model = init_model(TrainConfig(**TINY), 50)
    opt = configure_optimizer(model, TrainConfig(**TINY), "cpu")
    assert all(p.dim() >= 2 for p in opt.param_groups[0]["params"]) and opt.param_groups[1]["weight_decay"] == 0.0


def _cli(*args):
    return [sys.executable, "-m", "gpt2kit", "train", *map(str, args)]


def _metrics(run):
    recs = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return [(r["step"], r["train_loss"], r["val_loss"], r["lr"]) for r in recs]


RUN_FLAGS = ["--n-layer", 2, "--n-head", 2, "--n-embd", 64, "--block-size", 64, "--batch-size", 8, "--max-iters", 40,
             "--eval-interval", 10, "--eval-iters", 2, "--dropout", 0.1, "--device", "cpu", "--no-progress", "--no-plot",
             "--threads", 1, "--lr-decay-iters", 40]


def test_resume_after_sigkill_is_bit_identical(data_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = subprocess.run(_cli("--data", data_dir, "--out", a, *RUN_FLAGS), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(_cli("--data", data_dir, "--out", b, *RUN_FLAGS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = sigkill_after_iter(proc, b, 20)
    assert 20 <= killed_at < 40, "the run finished before it could be killed"
    r = subprocess.run(_cli("--resume", b), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    sa = (a / "state" / "step-00000040" / "model.safetensors").read_bytes()
    sb = (b / "state" / "step-00000040" / "model.safetensors").read_bytes()
    assert sa == sb  # bit-identical weights
    assert _metrics(a) == _metrics(b)  # the same loss log, no lines lost or repeated


def test_ctrl_c_saves_state_and_resumes(data_dir, tmp_path):
    out = tmp_path / "c"
    flags = [f for f in RUN_FLAGS]
    flags[flags.index("--max-iters") + 1] = 100000
    proc = subprocess.Popen(_cli("--data", data_dir, "--out", out, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "state" / "LATEST"
    deadline = time.time() + 600
    while not latest.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no state/LATEST within 600 s (exit code {proc.poll()}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out_text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    it = json.loads(latest.read_text())["iter"]
    assert it > 0 and f"gpt2kit train --resume {out}" in out_text
    r = subprocess.run(_cli("--resume", out, "--max-iters", it + 3), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and json.loads(latest.read_text())["iter"] == it + 3


def test_ddp_two_processes_equal_one_with_double_accumulation(data_dir, tmp_path):
    flags = [*RUN_FLAGS, "--grad-accum", 2, "--dropout", 0.0]
    flags[flags.index("--max-iters") + 1] = 20
    one = subprocess.run(_cli("--data", data_dir, "--out", tmp_path / "one", *flags), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2kit",
                          "train", "--data", data_dir, "--out", str(tmp_path / "two"), *map(str, flags)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    m1, m2 = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r[0] for r in m1] == [r[0] for r in m2] == [0, 10, 20]
    for r1, r2 in zip(m1, m2):
        assert abs(r1[1] - r2[1]) <= 1e-5 and abs(r1[2] - r2[2]) <= 1e-5


def test_presets_load_and_cli_overrides():
    assert {"quickstart", "shakespeare-char", "shakespeare-char-gpu", "finetune-shakespeare", "gpt2-124M"} <= set(preset_names())
    cfg = make_config("shakespeare-char", overrides={"n_layer": 6})
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.batch_size, cfg.max_iters, cfg.lr) == (6, 128, 64, 12, 2000, 1e-3)
    from gpt2kit.errors import GPT2KitError

    with pytest.raises(GPT2KitError, match="unknown preset"):
        make_config("nope")


def test_config_file_toml_and_json(tmp_path):
    (tmp_path / "c.toml").write_text('n_layer = 3\nlr = 1e-3\n')
    (tmp_path / "c.json").write_text('{"n_embd": 96, "n_head": 3}')
    assert make_config(config_file=str(tmp_path / "c.toml")).n_layer == 3
    assert make_config(config_file=str(tmp_path / "c.json")).n_embd == 96
    (tmp_path / "bad.toml").write_text('n_layers = 3\n')
    from gpt2kit.errors import GPT2KitError

    with pytest.raises(GPT2KitError, match="unknown keys"):
        make_config(config_file=str(tmp_path / "bad.toml"))


def test_finetune_from_pretrained_dir(data_dir, tmp_path):
    from gpt2kit import load_model, save_model
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    n_vocab = TokenData(data_dir).n_vocab
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=n_vocab)), tmp_path / "pre")
    cfg = TrainConfig(**{**TINY, "block_size": 48}, data=data_dir, out=str(tmp_path / "ft"), init_from=str(tmp_path / "pre"),
                      max_iters=4, eval_interval=2)
    train(cfg, log=lambda *a: None)
    m = load_model(tmp_path / "ft")
    assert m.config.block_size == 48 and m.transformer.wpe.weight.shape[0] == 48


@pytest.fixture
def tiny_run(data_dir, tmp_path):
    """A finished 4-iteration run (evals at 0, 2, 4), trained in-process."""
    cfg = TrainConfig(**TINY, data=data_dir, out=str(tmp_path / "run"), max_iters=4, eval_interval=2)
    train(cfg, log=lambda *a: None)
    return tmp_path / "run"


def test_resume_with_new_dropout_changes_every_dropout_module(tiny_run):
    trainer = Trainer(resume_config(str(tiny_run), {"dropout": 0.3, "max_iters": 6}), resume=True, log=lambda *a: None)
    trainer.run()
    recorded = json.loads((tiny_run / "state" / "model_config.json").read_text())["dropout"]
    drops = [m.p for m in trainer.raw_model.modules() if isinstance(m, torch.nn.Dropout)]
    attn = [b.attn.dropout for b in trainer.raw_model.transformer.h]  # SDPA's dropout_p
    assert recorded == 0.3 and len(drops) == 1 + 2 * 2 and set(drops) == set(attn) == {recorded}
    assert json.loads((tiny_run / "train_config.json").read_text())["dropout"] == 0.3


def test_resume_refuses_overrides_that_cannot_take_effect(tiny_run):
    from gpt2kit.errors import GPT2KitError

    with pytest.raises(GPT2KitError, match="cannot change n_embd, n_layer when resuming"):
        resume(str(tiny_run), n_layer=3, n_embd=48, max_iters=6)
    assert resume_config(str(tiny_run), {"n_layer": 2, "lr": 5e-3}).lr == 5e-3  # unchanged values are fine


def test_resume_drops_a_torn_metrics_line_and_says_so(tiny_run):
    with open(tiny_run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train_lo')  # a kill in the middle of an append
    r = cli_in_process("train", "--resume", tiny_run, "--max-iters", 6)
    assert r.returncode == 0, r.stderr[-2000:]
    notices = [ln for ln in r.stdout.splitlines() if ln.startswith("note:")]
    assert notices == [f"note: dropped the torn last line of {tiny_run / 'metrics.jsonl'} (the previous run was killed mid-write)"]
    assert [json.loads(line)["step"] for line in (tiny_run / "metrics.jsonl").read_text().splitlines()] == [0, 2, 4, 6]


def test_resume_prints_the_configured_samples(tiny_run):
    r = cli_in_process("train", "--resume", tiny_run, "--max-iters", 6, "--samples", 2, "--sample-tokens", 5)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("---------- sample") == 2
