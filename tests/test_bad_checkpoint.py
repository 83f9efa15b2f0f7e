"""Bad checkpoint files (issue 16, item 10): each is one GPT2KitError line naming the file and field.

Every case copies the tiny checkpoint and breaks one file. The same case goes through the CLI
(exit 2, one stderr line, no traceback) and the Python API (GPT2KitError). Oversized configs
(n_layer 10**7, n_embd 2**40) must be refused before anything is built: the CLI timeout
bounds how long that may take.
"""
import json
import shutil

import pytest
from conftest import assert_one_line_error, cli_in_process, run_cli

import gpt2kit
from gpt2kit.errors import GPT2KitError


def _model_field(**fields):
    def apply(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"].update(fields)
        (d / "config.json").write_text(json.dumps(cfg))
    return apply


def _config(obj):
    return lambda d: (d / "config.json").write_text(json.dumps(obj))


def _version(v):
    def apply(d):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "gpt2kit_version": v}))
    return apply


def _int64_weights(d):
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    save_file({k: v.astype("int64") for k, v in sd.items()}, str(d / "model.safetensors"))


def _tokenizer(obj):
    return lambda d: (d / "tokenizer" / "tokenizer.json").write_text(json.dumps(obj))


MODEL_CASES = {  # name: (break the dir, needle in the one error line)
    "config-list": (_config([]), "config.json must hold a JSON object"),
    "config-string": (_config("gpt2"), "config.json must hold a JSON object"),
    "no-model": (_config({"gpt2kit_version": 1}), "'model' must be an object"),
    "model-null": (_config({"gpt2kit_version": 1, "model": None}), "'model' must be an object"),
    "version-string": (_version("1"), "gpt2kit_version must be an integer"),
    "version-newer": (_version(99), "newer gpt2kit"),
    "neither": (_config({"model_type": "llama"}), "neither a gpt2kit checkpoint"),
    "hf-missing-keys": (_config({"model_type": "gpt2"}), "lacks ['vocab_size', 'n_layer', 'n_head', 'n_embd']"),
    "dropout-string": (_model_field(dropout="x"), "config dropout must be a number in [0, 1), got 'x'"),
    "eps-string": (_model_field(layer_norm_epsilon="x"), "config layer_norm_epsilon must be a number"),
    "n_embd-huge": (_model_field(n_embd=2**40), "config n_embd must be a positive integer (at most 65536), got 1099511627776"),
    "n_layer-huge": (_model_field(n_layer=10**7), "config n_layer must be a positive integer (at most 1024), got 10000000"),
    "n_head-bool": (_model_field(n_head=True), "config n_head must be a positive integer"),
    "n_head-divides": (_model_field(n_head=3), "must be divisible by n_head"),
    "too-many-params": (_model_field(n_layer=1024, n_embd=65536, n_head=64), "parameters, over the"),
    "bias-string": (_model_field(bias="no"), "config bias must be true or false, got 'no'"),
    "unknown-key": (_model_field(n_embed=32), "unknown model config keys ['n_embed']"),
    "int64-weights": (_int64_weights, "is stored as I64, not a float type"),
}
TOKENIZER_CASES = {
    "tok-char-no-chars": (_tokenizer({"kind": "char"}), "lacks the field 'chars'"),
    "tok-chars-int": (_tokenizer({"kind": "char", "chars": 5}), "field 'chars' must be a str, got 5"),
    "tok-eot-string": (_tokenizer({"kind": "char", "chars": "ab", "eot": "yes"}), "field 'eot' must be a bool"),
    "tok-words-string": (_tokenizer({"kind": "word", "words": "ab"}), "field 'words' must be a list"),
    "tok-list": (_tokenizer([]), "tokenizer.json must hold a JSON object"),
    "tok-kind-list": (_tokenizer({"kind": ["char"]}), "names tokenizer kind ['char']"),
}
ALL = {**MODEL_CASES, **TOKENIZER_CASES}
# Each CLI run costs a torch import: the default suite runs a representative few through the CLI
# (the Python API tests below cover every case in-process); -m slow runs them all.
CLI_DEFAULT = {"config-list", "no-model", "n_embd-huge", "n_layer-huge", "bias-string", "int64-weights", "tok-char-no-chars"}
CLI_CASES = [c if c in CLI_DEFAULT else pytest.param(c, marks=pytest.mark.slow) for c in sorted(ALL)]
NUMPY_CASES = ["n_layer-huge", "int64-weights", *(pytest.param(c, marks=pytest.mark.slow) for c in ("version-string", "bias-string", "tok-char-no-chars"))]


def _broken(tiny_checkpoint, tmp_path, case):
    d = tmp_path / case
    shutil.copytree(tiny_checkpoint, d)
    ALL[case][0](d)
    return d


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_one_line(tiny_checkpoint, tmp_path, case):
    d = _broken(tiny_checkpoint, tmp_path, case)
    cli = run_cli if case == "no-model" else cli_in_process  # one case through a real `python -m gpt2kit`
    r = cli("generate", "Hi", "--model", d, "--max-new-tokens", 1)
    assert_one_line_error(r, ALL[case][1])
    assert str(d) in r.stderr  # names the file


@pytest.mark.parametrize("case", NUMPY_CASES)
def test_cli_numpy_backend_one_line(tiny_checkpoint, tmp_path, case):
    d = _broken(tiny_checkpoint, tmp_path, case)
    r = cli_in_process("generate", "Hi", "--model", d, "--max-new-tokens", 1, "--backend", "numpy")
    needle = "is stored as I64, not a float type numpy can run" if case == "int64-weights" else ALL[case][1]
    assert_one_line_error(r, needle)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_load_model_raises(tiny_checkpoint, tmp_path, case):
    from gpt2kit.numpy_gpt2 import load

    d = _broken(tiny_checkpoint, tmp_path, case)
    for loader in (gpt2kit.load_model, load):
        with pytest.raises(GPT2KitError) as e:
            loader(d)
        msg = str(e.value)
        assert "\n" not in msg and str(d) in msg and ALL[case][1] in msg


@pytest.mark.parametrize("case", sorted(TOKENIZER_CASES))
def test_get_tokenizer_raises(tiny_checkpoint, tmp_path, case):
    d = _broken(tiny_checkpoint, tmp_path, case)
    with pytest.raises(GPT2KitError, match="tokenizer.json") as e:
        gpt2kit.get_tokenizer(d)
    assert ALL[case][1] in str(e.value)


def test_int64_bin_weights_refused(tmp_path):
    """An HF folder's pytorch_model.bin with integer weights is refused by build_model's dtype check."""
    import torch
    from conftest import hf_model

    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    torch.save({k: v.long() for k, v in hf.state_dict().items()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(GPT2KitError, match=r"is stored as torch.int64, not a float type"):
        gpt2kit.load_model(tmp_path)


def test_bin_that_is_not_a_state_dict_refused(tmp_path):
    import torch
    from conftest import hf_model

    hf_model().config.save_pretrained(tmp_path)
    torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
    with pytest.raises(GPT2KitError, match=r"pytorch_model.bin is not a plain state dict \(name -> tensor\)"):
        gpt2kit.load_model(tmp_path)
