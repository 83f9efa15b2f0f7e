"""FSDP2 (strategy=fsdp) on CPU with gloo: equal to one process, sharded state resumed on another
process count, the gathered checkpoint loadable, and its DCP index read without unpickling code."""
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import test_train
from conftest import assert_one_line_error, cli_in_process
from gpt2kit import load_model
from gpt2kit.errors import GPT2KitError
from gpt2kit.sharded_state import load_sharded
from gpt2kit.train import configure_optimizer, init_model, resume, train
from gpt2kit.train_config import TrainConfig

data_dir = test_train.data_dir  # the fixture: argparse.py, char-level

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, grad_accum=2, dropout=0.0, eval_iters=2,
            eval_interval=10, lr=1e-2, min_lr=1e-3, warmup_iters=3, lr_decay_iters=20, device="cpu", progress=False,
            plot=False, threads=1, always_save_checkpoint=True)


def _flags(**kw):
    return [x for k, v in {**TINY, **kw}.items() for x in
            ([f"--{k.replace('_', '-')}"] if v is True else [f"--no-{k.replace('_', '-')}"] if v is False else [f"--{k.replace('_', '-')}", str(v)])]


def _torchrun(nproc, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        "-m", "gpt2kit", "train", *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _metrics(run):
    import json

    return [(r["step"], r["train_loss"], r["val_loss"]) for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))]


def _assert_close_runs(a, b, tol=1e-5):
    ma, mb = _metrics(a), _metrics(b)
    assert [r[0] for r in ma] == [r[0] for r in mb] == [0, 10, 20]
    for ra, rb in zip(ma, mb):
        assert abs(ra[1] - rb[1]) <= tol and abs(ra[2] - rb[2]) <= tol, (ra, rb)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """one: a single process, 20 iters; two: FSDP on 2 processes, 20 iters (a torchrun launch is ~10-25 s here)."""
    root = tmp_path_factory.mktemp("runs")
    train(TrainConfig(**TINY, data=data_dir, out=str(root / "one"), max_iters=20), log=lambda *a: None)
    _torchrun(2, "--data", data_dir, "--out", root / "two", *_flags(max_iters=20), "--strategy", "fsdp")
    return root


@pytest.fixture(scope="module")
def half2(runs, data_dir):
    """FSDP on 2 processes stopped at iter 10 (its state is resumed by copies of it)."""
    _torchrun(2, "--data", data_dir, "--out", runs / "half2", *_flags(max_iters=10), "--strategy", "fsdp")
    return runs / "half2"


def _load_dcp(path, n_vocab):
    """A sharded state loaded into a plain model (no process group: DCP reads every rank's shards)."""
    model = init_model(TrainConfig(**TINY), n_vocab)
    load_sharded(str(path), model, configure_optimizer(model, TrainConfig(**TINY), "cpu"))
    return model.eval()


def test_two_fsdp_processes_equal_one_and_the_gathered_checkpoint_is_the_trained_model(runs):
    _assert_close_runs(runs / "one", runs / "two")
    dcp_files = sorted(os.listdir(runs / "two" / "state" / "step-00000020" / "dcp"))
    assert dcp_files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard file per rank
    gathered, one = load_model(runs / "two"), load_model(runs / "one")
    trained = _load_dcp(runs / "two" / "state" / "step-00000020" / "dcp", gathered.config.vocab_size)
    x = torch.randint(0, gathered.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(gathered(x)[0], trained(x)[0])  # rank 0's safetensors == the shards it gathered
        # 20 AdamW steps from gradients summed in another order: the losses agree to 1e-5 (above), the logits to 1e-3
        torch.testing.assert_close(gathered(x)[0], one(x)[0], atol=1e-3, rtol=0)
    r = cli_in_process("generate", "--model", runs / "two", "--max-new-tokens", 5, "--seed", 0, "def ")
    assert r.returncode == 0 and r.stdout.startswith("def "), r.stderr[-2000:]


@pytest.mark.slow  # two torchrun launches
def test_state_saved_on_two_processes_resumes_on_one(runs, half2, tmp_path):
    shutil.copytree(half2, tmp_path / "r")
    _torchrun(1, "--resume", tmp_path / "r", "--max-iters", 20)
    _assert_close_runs(runs / "two", tmp_path / "r")
    a, b = load_file(runs / "two" / "model.safetensors"), load_file(tmp_path / "r" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-3, rtol=0) for k in a)  # 10 AdamW steps on other sums


@pytest.mark.slow  # two torchrun launches
def test_resume_on_the_same_two_processes_is_bit_identical(runs, half2, tmp_path):
    shutil.copytree(half2, tmp_path / "r")
    _torchrun(2, "--resume", tmp_path / "r", "--max-iters", 20)
    a, b = load_file(runs / "two" / "model.safetensors"), load_file(tmp_path / "r" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m[:2] for m in _metrics(runs / "two")] == [m[:2] for m in _metrics(tmp_path / "r")]


@pytest.mark.slow  # a torchrun launch after the 2-process runs
def test_one_process_state_resumes_sharded_on_two(runs, data_dir, tmp_path):
    out = tmp_path / "r"
    train(TrainConfig(**TINY, data=data_dir, out=str(out), max_iters=10), log=lambda *a: None)  # optimizer.pt, whole
    _torchrun(2, "--resume", out, "--max-iters", 20, "--strategy", "fsdp")
    _assert_close_runs(runs / "two", out)
    assert sorted(os.listdir(out / "state" / "step-00000020")) == ["dcp", "rng.safetensors", "state.json"]


@pytest.mark.slow  # two torchrun launches
def test_sharded_state_resumes_without_torchrun(runs, half2, tmp_path):
    shutil.copytree(half2, tmp_path / "r")
    resume(str(tmp_path / "r"), max_iters=20, strategy="ddp", log=lambda *a: None)
    _assert_close_runs(runs / "two", tmp_path / "r")


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_the_dcp_index_is_read_without_running_pickled_code(runs, tmp_path):
    shutil.copytree(runs / "two" / "state" / "step-00000020" / "dcp", tmp_path / "dcp")
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_Exploit(str(tmp_path / "pwned"))))
    with pytest.raises(GPT2KitError, match=r"\.metadata is not a DCP index of tensors \(os\.makedirs is not part"):
        _load_dcp(tmp_path / "dcp", load_model(runs / "two").config.vocab_size)
    assert not (tmp_path / "pwned").exists()


def test_a_damaged_sharded_state_is_one_error(runs, tmp_path):
    shutil.copytree(runs / "two" / "state" / "step-00000020" / "dcp", tmp_path / "dcp")
    n_vocab = load_model(runs / "two").config.vocab_size
    (tmp_path / "dcp" / "__1_0.distcp").unlink()  # rank 1's shards
    with pytest.raises(GPT2KitError, match="cannot load the sharded state in .*; the state is corrupt or from another model"):
        _load_dcp(tmp_path / "dcp", n_vocab)
    (tmp_path / "dcp" / ".metadata").unlink()
    with pytest.raises(GPT2KitError, match="has no .metadata; the state is incomplete"):
        _load_dcp(tmp_path / "dcp", n_vocab)


@pytest.mark.parametrize("flags, needle", [
    (["--strategy", "fsdp"], "launch with torchrun --nproc_per_node=N"),
    (["--strategy", "fsdp", "--dtype", "float16"], "use --dtype bfloat16"),
    (["--strategy", "zero3"], "strategy must be ddp or fsdp"),
])
def test_bad_strategy_is_one_line_and_writes_nothing(data_dir, tmp_path, flags, needle):
    r = cli_in_process("train", "--data", data_dir, "--out", tmp_path / "out", "--device", "cpu", *flags)
    assert_one_line_error(r, needle)
    assert not (tmp_path / "out").exists()
