"""`gpt2kit train` on bad input: exit 2, one line on stderr naming the problem, no traceback, nothing written."""
import json
import shutil
import sysconfig

import pytest

from conftest import assert_one_line_error, cli_in_process as cli  # in this process: see conftest
from gpt2kit.data import prepare

TINY = ["--n-layer", 2, "--n-head", 2, "--n-embd", 32, "--block-size", 32, "--batch-size", 4, "--max-iters", 4,
        "--eval-interval", 2, "--eval-iters", 2, "--device", "cpu", "--no-progress", "--no-plot", "--threads", 1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "corpus.txt").write_text(open(sysconfig.get_paths()["stdlib"] + "/argparse.py", encoding="utf-8").read()[:60000])
    prepare([str(d / "corpus.txt")], str(d / "prepared"), "char", progress=False)
    return d / "prepared"


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    r = cli("train", "--data", data_dir, "--out", out, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _bad_data(data_dir, tmp_path, meta_edit):
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    meta = json.loads((d / "meta.json").read_text())
    meta_edit(meta)
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def _binary_config(tmp_path):
    (tmp_path / "c.toml").write_bytes(bytes(range(256)) * 4)
    return tmp_path / "c.toml"


def _out_file(tmp_path):
    (tmp_path / "f").write_text("not a dir")
    return tmp_path / "f"


# (id, extra args given (data_dir, tmp_path) -> (data, out, flags), needle)
FRESH = [
    ("out-is-a-file", lambda d, t: (d, _out_file(t), []), "is an existing file"),
    ("seed-negative", lambda d, t: (d, t / "o", ["--seed", -1]), "seed must be in [0, 2**32)"),
    ("seed-float", lambda d, t: (d, t / "o", ["--seed", "1e23"]), "invalid int value: '1e23'"),
    ("seed-huge", lambda d, t: (d, t / "o", ["--seed", 10**23]), "seed must be in [0, 2**32)"),
    ("beta1-5", lambda d, t: (d, t / "o", ["--beta1", 5]), "beta1 must be in [0, 1)"),
    ("device-bogus", lambda d, t: (d, t / "o", ["--device", "bogus"]), "device must be auto, cpu"),
    ("n-embd-huge", lambda d, t: (d, t / "o", ["--n-embd", 200000, "--n-head", 4]), "use a smaller n_embd"),
    ("config-binary", lambda d, t: (d, t / "o", ["--config", _binary_config(t)]), "is not UTF-8 text"),
    ("weight-decay-nan", lambda d, t: (d, t / "o", ["--weight-decay", "nan"]), "weight_decay must be a finite number"),
    ("lr-inf", lambda d, t: (d, t / "o", ["--lr", "inf"]), "lr must be a finite number"),
    ("grad-clip-nan", lambda d, t: (d, t / "o", ["--grad-clip", "nan"]), "grad_clip must be a finite number"),
    ("beta2-inf", lambda d, t: (d, t / "o", ["--beta2=-inf"]), "beta2 must be a finite number"),
    ("n-vocab-string", lambda d, t: (_bad_data(d, t, lambda m: m.update(n_vocab="sixty")), t / "o", []),
     "n_vocab must be a positive integer, got 'sixty'"),
    ("n-vocab-missing", lambda d, t: (_bad_data(d, t, lambda m: m.pop("n_vocab")), t / "o", []),
     "n_vocab must be a positive integer, got None"),
    ("token-ids-over-vocab", lambda d, t: (_bad_data(d, t, lambda m: m.update(n_vocab=10)), t / "o", []),
     "but meta.json says n_vocab=10"),
]


@pytest.mark.parametrize("make,needle", [c[1:] for c in FRESH], ids=[c[0] for c in FRESH])
def test_fresh_run_bad_input(data_dir, tmp_path, make, needle):
    data, out, flags = make(data_dir, tmp_path)
    existed = out.exists()
    r = cli("train", "--data", data, "--out", out, *TINY, *flags)
    assert_one_line_error(r, needle)
    assert out.exists() == existed and (not out.is_dir() or not any(out.iterdir()))  # nothing written


def _write(rel, text):
    return lambda run: (run / rel).write_text(text)


def _drop_keys(run):
    latest = json.loads((run / "state" / "LATEST").read_text())
    p = run / "state" / latest["dir"] / "state.json"
    state = json.loads(p.read_text())
    del state["numpy_rng"], state["best_val_loss"]
    p.write_text(json.dumps(state))


RESUME = [
    ("latest-is-a-list", _write("state/LATEST", "[]"), [], "the state is corrupt"),
    ("latest-escapes", _write("state/LATEST", '{"iter": 4, "dir": "../../etc"}'), [], "the state is corrupt"),
    ("state-missing-keys", _drop_keys, [], "lacks best_val_loss, numpy_rng"),
    ("train-config-list", _write("train_config.json", "[]"), [], "must hold a table of config fields"),
    ("train-config-bad-type", _write("train_config.json", '{"n_layer": "two"}'), [], "key n_layer must be int"),
    ("train-config-unknown-key", _write("train_config.json", '{"n_layers": 2}'), [], "unknown keys ['n_layers']"),
    ("train-config-not-json", _write("train_config.json", "{"), [], "is not valid JSON"),
    ("already-done", lambda run: None, [], "is already done: it reached iter 4 of max_iters=4"),
    ("architecture-override", lambda run: None, ["--n-layer", 3, "--max-iters", 6], "cannot change n_layer when resuming"),
    ("preset-with-resume", lambda run: None, ["--preset", "quickstart"], "drop --preset/--config"),
]


def _snapshot(d):
    return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage,flags,needle", [c[1:] for c in RESUME], ids=[c[0] for c in RESUME])
def test_resume_bad_input(finished_run, tmp_path, damage, flags, needle):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damage(run)
    before = _snapshot(run)
    r = cli("train", "--resume", run, *flags)
    assert_one_line_error(r, needle)
    assert _snapshot(run) == before  # nothing written


def test_read_only_out_dir(data_dir, readonly_dir):
    r = cli("train", "--data", data_dir, "--out", readonly_dir / "run", *TINY)
    assert_one_line_error(r, "is not writable")


def test_full_disk(data_dir, full_disk_dir):
    r = cli("train", "--data", data_dir, "--out", full_disk_dir / "run", *TINY)
    assert_one_line_error(r, "MiB free but a checkpoint and training state need about")
    assert not (full_disk_dir / "run").exists()
