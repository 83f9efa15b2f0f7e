"""Training over a sharded data dir (issue 13): exact resume, DDP equality, and the gpt2-124M recipe end to end."""
import json
import os
import sysconfig
from dataclasses import replace

import pytest

from conftest import cli_in_process
from gpt2kit.data import TokenData, prepare
from gpt2kit.train import resume, train
from gpt2kit.train_config import TrainConfig, make_config
import test_train
from test_train import TINY, _metrics

STDLIB = sysconfig.get_paths()["stdlib"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """argparse.py in char shards of 20,000 tokens: one val shard and at least 3 train shards."""
    d = tmp_path_factory.mktemp("sharded")
    (d / "corpus.txt").write_text(open(os.path.join(STDLIB, "argparse.py"), encoding="utf-8").read())
    r = prepare([str(d / "corpus.txt")], str(d / "prepared"), "char", shard_tokens=20_000, progress=False)
    assert r.shards >= 4
    return str(d / "prepared")


def test_training_across_shards_resumes_bit_identically(sharded, tmp_path):
    assert len(TokenData(sharded).splits["train"]) >= 3
    cfg = dict(TINY, data=sharded, dropout=0.1, eval_interval=4, log_interval=1)
    whole = train(TrainConfig(**cfg, out=str(tmp_path / "a"), max_iters=8), log=lambda *a: None)
    train(TrainConfig(**cfg, out=str(tmp_path / "b"), max_iters=4), log=lambda *a: None)
    resumed = resume(str(tmp_path / "b"), max_iters=8, log=lambda *a: None)
    step = "state/step-00000008/model.safetensors"
    assert (tmp_path / "a" / step).read_bytes() == (tmp_path / "b" / step).read_bytes()
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert whole.train_losses[4:] == resumed.train_losses


@pytest.mark.slow  # two torchrun processes (~10 s); test_train.py keeps DDP equality in the default suite
def test_ddp_two_processes_equal_one_across_shards(sharded, tmp_path):
    # test_train's DDP check, on the sharded data, named by its index file
    test_train.test_ddp_two_processes_equal_one_with_double_accumulation(os.path.join(sharded, "meta.json"), tmp_path)


# the gpt2-124M preset as the README runs it, with a tiny model: every code path of the big run on a CPU
RECIPE_TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=2, grad_accum=2, eval_interval=2, eval_iters=1,
                   warmup_iters=1, lr_decay_iters=4, device="cpu", dtype="float32", compile=False, progress=False, plot=False, threads=1)


def test_gpt2_124m_recipe_end_to_end_on_cpu(tmp_path):
    """prepare (gpt2 BPE, shards) -> the gpt2-124M preset -> eval -> checkpoint -> resume, equal to one run -> eval CLI."""
    (tmp_path / "c.txt").write_text("".join(open(os.path.join(STDLIB, n), encoding="utf-8").read() for n in ("argparse.py", "typing.py")))
    r = cli_in_process("prepare", tmp_path / "c.txt", "--out", tmp_path / "data", "--shard-tokens", 10_000, "--num-proc", 2)
    assert r.returncode == 0, r.stderr[-1000:]
    index = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert [s["split"] for s in index["shards"]][:4] == ["val", "train", "train", "train"]
    quiet = {"log": lambda *a: None}
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = make_config("gpt2-124M", overrides={**RECIPE_TINY, "data": str(tmp_path / "data"), "out": str(a), "max_iters": 4})
    assert (cfg.tokenizer, cfg.lr, cfg.beta2, cfg.weight_decay, cfg.dropout) == ("gpt2", 6e-4, 0.95, 0.1, 0.0)  # the preset's
    train(cfg, **quiet)
    train(replace(cfg, out=str(b), max_iters=2), **quiet)
    resume(str(b), max_iters=4, **quiet)
    assert _metrics(a) == _metrics(b) and [m[0] for m in _metrics(a)] == [0, 2, 4]
    step = "state/step-00000004/model.safetensors"
    assert (a / step).read_bytes() == (b / step).read_bytes()
    r = cli_in_process("eval", "perplexity", "--model", a, "--data", tmp_path / "data", "--max-length", 32, "--stride", 32, "--no-progress")
    assert r.returncode == 0, r.stderr[-1000:]
    ppl = json.loads(r.stdout)
    n = index["shards"][0]["tokens"]
    assert ppl["tokens"] == n - -(-n // 32) and 1 < ppl["ppl"] < 50257  # the val shard in disjoint windows (first tokens unscored)
