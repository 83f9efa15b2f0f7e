"""Interop: OpenAI TF checkpoints, nanoGPT, llm.c, HF and GGUF, each checked against a reader nobody here wrote."""
from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2kit.errors import GPT2KitError
from interop_helpers import PROMPT, hf_from_arrays, logits, max_diff, random_gpt

FIXTURES = Path(__file__).parent / "fixtures"
TF_DIR = FIXTURES / "tf_gpt2_tiny"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(*args):
    """Run `gpt2kit ARGS` in this process: (returncode, stdout, stderr) like subprocess.run."""
    import contextlib
    import io

    from gpt2kit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            rc = e.code
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def cli_subprocess(*args):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "gpt2kit", *map(str, args)], capture_output=True, text=True, env=env)


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, f"{n!r} not in {msg!r}"


def char_tokenizer(text="hello world\nthe cat sat on the mat, é!"):
    from gpt2kit.tokenization import build_tokenizer

    return build_tokenizer("char", [text])


# -- OpenAI TF checkpoint -----------------------------------------------------------------------

def test_tf_index_and_tensors_equal_the_values_tensorflow_wrote():
    from gpt2kit.interop.tf_checkpoint import read_index, read_tensors

    values = np.load(TF_DIR / "values.npz")
    header, entries = read_index(str(TF_DIR / "model.ckpt.index"))
    assert header == {"num_shards": 1, "endianness": 0}
    assert sorted(entries) == sorted(k.replace(".", "/") for k in values.files)
    assert entries["model/h1/attn/c_attn/w"].shape == (1, 8, 24) and entries["model/wte"].shape == (64, 8)
    arrays = read_tensors(str(TF_DIR / "model.ckpt"))
    for k in values.files:
        a = arrays[k.replace(".", "/")]
        assert a.dtype == np.float32 and np.array_equal(a, values[k]), k


def test_tf_fixture_logits_equal_transformers_on_the_same_values(tmp_path):
    from gpt2kit.interop.tf_checkpoint import load_openai_checkpoint
    from gpt2kit.weights import load_model

    hp = json.loads((TF_DIR / "hparams.json").read_text())
    v = {k: torch.from_numpy(a) for k, a in np.load(TF_DIR / "values.npz").items()}
    # OpenAI's conv1d w[0] is (nx, nf): exactly HF's Conv1D layout, so the oracle needs no transpose
    sd = {"transformer.wte.weight": v["model.wte"], "transformer.wpe.weight": v["model.wpe"],
          "transformer.ln_f.weight": v["model.ln_f.g"], "transformer.ln_f.bias": v["model.ln_f.b"]}
    for i in range(hp["n_layer"]):
        for mod in ("ln_1", "ln_2"):
            sd[f"transformer.h.{i}.{mod}.weight"] = v[f"model.h{i}.{mod}.g"]
            sd[f"transformer.h.{i}.{mod}.bias"] = v[f"model.h{i}.{mod}.b"]
        for mod in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            sd[f"transformer.h.{i}.{mod}.weight"] = v[f"model.h{i}.{mod}.w"][0]
            sd[f"transformer.h.{i}.{mod}.bias"] = v[f"model.h{i}.{mod}.b"]
    hf = hf_from_arrays(dict(vocab_size=hp["n_vocab"], n_positions=hp["n_ctx"], n_embd=hp["n_embd"], n_layer=hp["n_layer"], n_head=hp["n_head"]), sd)

    model, tok = load_openai_checkpoint(str(TF_DIR))
    assert tok is None  # 64-token fixture vocabulary: not GPT-2's
    ids = [1, 5, 63, 0, 17, 42, 8, 9, 10, 11, 12, 13, 14, 15, 16, 2]  # the full 16-token context
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert max_diff(logits(model, ids), ref) <= 1e-6

    # the CLI converts the folder (detected as openai-tf) into a checkpoint with the same logits
    r = cli("convert", TF_DIR, "--out", tmp_path / "ck")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("openai-tf -> ")
    assert max_diff(logits(load_model(tmp_path / "ck"), ids), logits(model, ids)) <= 1e-6
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert meta["converted_from"]["source_format"] == "openai-tf"


def _copy_tf(tmp_path) -> Path:
    d = tmp_path / "tf"
    shutil.copytree(TF_DIR, d)
    return d


def _flip(path: Path, offset: int):
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x55
    path.write_bytes(bytes(b))


def test_tf_reader_rejects_truncated_and_corrupt_files(tmp_path):
    from gpt2kit.interop.tf_checkpoint import load_openai_checkpoint

    cases = []
    d = _copy_tf(tmp_path / "a")  # index cut short: footer gone
    idx = d / "model.ckpt.index"
    idx.write_bytes(idx.read_bytes()[:-10])
    cases.append((d, idx, "magic"))
    d = _copy_tf(tmp_path / "b")  # index shorter than a footer
    (d / "model.ckpt.index").write_bytes(b"\x00" * 20)
    cases.append((d, d / "model.ckpt.index", "truncated"))
    d = _copy_tf(tmp_path / "c")  # one byte of a tensor entry changed: the block crc catches it
    _flip(d / "model.ckpt.index", 40)
    cases.append((d, d / "model.ckpt.index", "crc32c"))
    d = _copy_tf(tmp_path / "d")  # data shard cut short
    data = d / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:5000])
    cases.append((d, data, "truncated"))
    d = _copy_tf(tmp_path / "e")  # one float changed in the data shard
    _flip(d / "model.ckpt.data-00000-of-00001", 123)
    cases.append((d, d / "model.ckpt.data-00000-of-00001", "crc32c"))
    d = _copy_tf(tmp_path / "f")  # data shard missing
    (d / "model.ckpt.data-00000-of-00001").unlink()
    cases.append((d, d / "model.ckpt.data-00000-of-00001", "not found"))
    d = _copy_tf(tmp_path / "g")  # hparams.json cut mid-way
    (d / "hparams.json").write_text('{"n_vocab": 64, "n_ctx"')
    cases.append((d, d / "hparams.json", "not valid JSON"))
    d = _copy_tf(tmp_path / "h")  # OpenAI's vocabulary files beside a 64-token model
    from gpt2kit.tokenization.gpt2 import vocab_files

    for src, name in zip(vocab_files(), ("encoder.json", "vocab.bpe")):
        shutil.copyfile(src, d / name)
    cases.append((d, d, "n_vocab 64"))
    d = _copy_tf(tmp_path / "i")  # a vocabulary that is not GPT-2's
    (d / "encoder.json").write_text('{"a": 0}')
    (d / "vocab.bpe").write_text("#version: 0.2\n")
    cases.append((d, d, "differ from GPT-2's"))
    for folder, bad_file, problem in cases:
        with pytest.raises(GPT2KitError) as e:
            load_openai_checkpoint(str(folder))
        one_line_error(e, bad_file, problem)
    # the CLI prints the same as one line, no traceback
    r = cli_subprocess("convert", cases[0][0], "--out", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "magic" in r.stderr


# -- HF export ------------------------------------------------------------------------------------

def test_hf_export_loads_in_transformers_same_logits_and_greedy_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpt2kit.generation import generate
    from gpt2kit.interop.hf_export import export_hf
    from gpt2kit.tokenization import get_tokenizer
    from gpt2kit.weights import load_model

    m = random_gpt(pad_vocab_multiple=64)  # padded rows must not leak into the export
    tok = get_tokenizer("gpt2")
    export_hf(m, tok, str(tmp_path / "hf"))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.vocab_size == 50257
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0]
        hf_greedy = hf.generate(torch.tensor([PROMPT]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                                pad_token_id=0, attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long))[0, len(PROMPT):].tolist()
    assert max_diff(logits(m), ref) <= 1e-5
    ours = list(generate(m, PROMPT, 20, temperature=0.0))
    assert ours == hf_greedy and len(set(ours)) > 1

    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello world, it's 2024!\n  Tabs\tand ünïcode."
    assert hf_tok.encode(text) == tok.encode(text)

    # gpt2kit -> HF -> gpt2kit keeps the logits
    back = load_model(tmp_path / "hf")
    assert max_diff(logits(back), logits(m)) <= 1e-6
    assert get_tokenizer(str(tmp_path / "hf")).kind == "gpt2"

    # a truncated export is refused with one line naming the file
    st = tmp_path / "hf" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(GPT2KitError) as e:
        load_model(tmp_path / "hf")
    one_line_error(e, st, "truncated")


def test_hf_export_of_a_bias_free_char_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from gpt2kit.interop.hf_export import export_hf
    from gpt2kit.tokenization import get_tokenizer
    from gpt2kit.weights import load_model

    tok = char_tokenizer()
    m = random_gpt(vocab_size=tok.n_vocab, bias=False)
    export_hf(m, tok, str(tmp_path / "hf"))
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["bos_token_id"] is None and cfg["vocab_size"] == tok.n_vocab
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = tok.encode("the cat sat")
    with torch.no_grad():
        assert max_diff(logits(m, ids), hf(torch.tensor([ids])).logits[0]) <= 1e-5
    back = load_model(tmp_path / "hf")
    assert max_diff(logits(back, ids), logits(m, ids)) <= 1e-6
    assert get_tokenizer(str(tmp_path / "hf")).encode("é cat") == tok.encode("é cat")


# -- llm.c ---------------------------------------------------------------------------------------

def test_llmc_model_roundtrip_fp32_and_bf16(tmp_path):
    from gpt2kit.interop.llmc import read_model, write_model

    m = random_gpt(n_layer=3, pad_vocab_multiple=64)
    p = tmp_path / "m.bin"
    write_model(m, str(p))
    C, L, T, V, Vp = 32, 3, 64, 50257, 50304
    header = struct.unpack("<256i", p.read_bytes()[:1024])
    assert header[:8] == (20240326, 3, T, V, L, 2, C, Vp) and not any(header[8:])
    n_params = Vp * C + T * C + L * (12 * C * C + 13 * C) + 2 * C  # llm.c's parameter count
    assert p.stat().st_size == 1024 + 4 * n_params
    flat = np.frombuffer(p.read_bytes()[1024:], dtype="<f4")
    sd = m.state_dict()
    # spot-check llm.c's order: wte (padded with zero rows), wpe, ln_1 w of every layer, ..., ln_f b last
    assert np.array_equal(flat[: V * C], sd["transformer.wte.weight"][:V].flatten().numpy())
    assert not flat[V * C : Vp * C].any()
    assert np.array_equal(flat[Vp * C : Vp * C + T * C], sd["transformer.wpe.weight"].flatten().numpy())
    off = Vp * C + T * C + 2 * L * C  # after wpe, ln_1 w, ln_1 b: c_attn weights of layer 0, (3C, C)
    assert np.array_equal(flat[off : off + 3 * C * C], sd["transformer.h.0.attn.c_attn.weight"].flatten().numpy())
    assert np.array_equal(flat[-C:], sd["transformer.ln_f.bias"].numpy())

    back, info = read_model(str(p))
    assert info == {"version": 3, "padded_vocab_size": Vp}
    assert max_diff(logits(back), logits(m)) <= 1e-6

    write_model(m, str(tmp_path / "bf.bin"), dtype="bfloat16")
    assert struct.unpack("<2i", (tmp_path / "bf.bin").read_bytes()[:8]) == (20240326, 5)
    assert (tmp_path / "bf.bin").stat().st_size == 1024 + 2 * n_params
    bf, _ = read_model(str(tmp_path / "bf.bin"))
    for k, v in bf.state_dict().items():  # bf16 file == the model rounded to bf16
        assert torch.equal(v, m.state_dict()[k][: v.shape[0]].to(torch.bfloat16).float()), k  # [:V]: wte's padding

    # gpt2kit -> llm.c -> gpt2kit through the CLI
    from gpt2kit.weights import load_model, save_model
    from gpt2kit.tokenization import get_tokenizer

    save_model(m, tmp_path / "ck", tokenizer=get_tokenizer("gpt2"))
    r = cli("export", tmp_path / "ck", "--format", "llmc", "--out", tmp_path / "cli.bin")
    assert r.returncode == 0, r.stderr
    r = cli("convert", tmp_path / "cli.bin", "--out", tmp_path / "ck2")
    assert r.returncode == 0 and "llmc -> " in r.stdout and "tokenizer gpt2" in r.stdout, r.stderr
    assert max_diff(logits(load_model(tmp_path / "ck2")), logits(m)) <= 1e-6


def test_llmc_bias_free_model_gets_zero_biases(tmp_path):
    from gpt2kit.interop.llmc import read_model, write_model

    tok = char_tokenizer()
    m = random_gpt(vocab_size=tok.n_vocab, bias=False)
    write_model(m, str(tmp_path / "m.bin"))
    back, info = read_model(str(tmp_path / "m.bin"))
    assert info["padded_vocab_size"] == 128
    ids = tok.encode("the mat")
    assert max_diff(logits(back, ids), logits(m, ids)) <= 1e-6
    assert not back.transformer.h[0].attn.c_attn.bias.any()
    # llm.c files carry no tokenizer: convert attaches one given by --tokenizer
    from gpt2kit.tokenization import get_tokenizer

    tok.save(tmp_path / "tok")
    r = cli("convert", tmp_path / "m.bin", "--out", tmp_path / "ck", "--tokenizer", tmp_path / "tok")
    assert r.returncode == 0 and "tokenizer char" in r.stdout, r.stderr
    assert get_tokenizer(str(tmp_path / "ck")).encode("the mat") == ids
    r = cli("convert", tmp_path / "m.bin", "--out", tmp_path / "ck2", "--tokenizer", "gpt2")
    assert r.returncode == 2 and "50257 tokens but the model" in r.stderr


def test_llmc_tokens_roundtrip_and_header_checks(tmp_path):
    from gpt2kit.interop.llmc import read_tokens, write_tokens

    toks = np.array([50256, 464, 0, 65535, 7], dtype=np.int64)
    write_tokens(toks, str(tmp_path / "t.bin"))
    raw = (tmp_path / "t.bin").read_bytes()
    assert struct.unpack("<3i", raw[:12]) == (20240520, 1, 5) and len(raw) == 1024 + 10
    assert np.frombuffer(raw[1024:], "<u2").tolist() == toks.tolist()
    assert read_tokens(str(tmp_path / "t.bin")).tolist() == toks.tolist()
    with pytest.raises(GPT2KitError, match="uint16"):
        write_tokens([70000], str(tmp_path / "big.bin"))


def test_llmc_readers_reject_truncated_and_corrupt_files(tmp_path):
    from gpt2kit.interop import load_any
    from gpt2kit.interop.llmc import read_model, read_tokens, write_model, write_tokens

    write_model(random_gpt(), str(tmp_path / "m.bin"))
    write_tokens(list(range(100)), str(tmp_path / "t.bin"))
    good_m, good_t = (tmp_path / "m.bin").read_bytes(), (tmp_path / "t.bin").read_bytes()

    def variant(name, data):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    bad_version = bytearray(good_m)
    bad_version[4:8] = struct.pack("<i", 4)
    cases = [
        (read_model, variant("cut.bin", good_m[:-100]), "truncated"),
        (read_model, variant("head.bin", good_m[:500]), "truncated"),
        (read_model, variant("ver.bin", bytes(bad_version)), "version 4"),
        (read_model, variant("magic.bin", b"\x01\x02\x03\x04" + good_m[4:]), "magic"),
        (read_model, tmp_path / "t.bin", "token file"),
        (read_tokens, variant("tcut.bin", good_t[:-3]), "truncated"),
        (read_tokens, tmp_path / "m.bin", "model file"),
        (read_tokens, tmp_path / "missing.bin", "not found"),
    ]
    for reader, path, problem in cases:
        with pytest.raises(GPT2KitError) as e:
            reader(str(path))
        one_line_error(e, path, problem)
    with pytest.raises(GPT2KitError) as e:  # convert refuses token files with a pointer to what they are
        load_any(str(tmp_path / "t.bin"))
    one_line_error(e, "t.bin", "token file, not a model")


# -- nanoGPT ----------------------------------------------------------------------------------------

def _nanogpt_ckpt(model, dataset="shakespeare_char"):
    """A checkpoint laid out as nanoGPT's train.py saves one, from a compiled model."""
    cfg = model.config
    sd = {}
    for k, v in model.state_dict().items():
        sd["_orig_mod." + k] = v.clone()  # torch.compile's wrapper prefix
    for i in range(cfg.n_layer):  # the causal-mask buffer nanoGPT registers without flash attention
        sd[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(cfg.block_size, cfg.block_size)).view(1, 1, cfg.block_size, cfg.block_size)
    trained = copy.deepcopy(model)  # a real optimizer state, without changing the weights under test
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    trained(torch.tensor([[1, 2, 3]]))[0].sum().backward()
    opt.step()
    opt.zero_grad()
    return {
        "model": sd, "optimizer": opt.state_dict(),
        "model_args": dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                           bias=cfg.bias, vocab_size=cfg.padded_vocab_size, dropout=0.0),
        "iter_num": 5000, "best_val_loss": torch.tensor(1.4697),
        "config": {"dataset": dataset, "batch_size": 64, "learning_rate": 1e-3, "compile": True},
    }


def test_nanogpt_char_checkpoint_converts_only_with_trust_pickle(tmp_path):
    from gpt2kit.interop.nanogpt import load_nanogpt
    from gpt2kit.tokenization import get_tokenizer
    from gpt2kit.weights import load_model

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    chars = sorted(set(text))
    m = random_gpt(vocab_size=len(chars), bias=False, block_size=32)
    want = logits(m, [3, 1, 4, 1, 5])
    out = tmp_path / "out-shakespeare-char"
    out.mkdir()
    torch.save(_nanogpt_ckpt(m), out / "ckpt.pt")
    with open(out / "meta.pkl", "wb") as f:  # as nanoGPT's data/shakespeare_char/prepare.py writes it
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)

    with pytest.raises(GPT2KitError) as e:
        load_nanogpt(str(out / "ckpt.pt"))
    one_line_error(e, "meta.pkl", "trust_pickle=True", "arbitrary code")
    r = cli("convert", out / "ckpt.pt", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and r.stderr.count("\n") == 1

    r = cli("convert", out / "ckpt.pt", "--out", tmp_path / "sc", "--trust-pickle")
    assert r.returncode == 0 and r.stdout.startswith("nanogpt -> ") and "tokenizer char" in r.stdout, r.stderr
    back = load_model(tmp_path / "sc")
    assert back.config.bias is False and back.config.vocab_size == len(chars)
    assert max_diff(logits(back, [3, 1, 4, 1, 5]), want) <= 1e-6
    tok = get_tokenizer(str(tmp_path / "sc"))
    assert tok.encode("hear me") == [chars.index(c) for c in "hear me"]
    meta = json.loads((tmp_path / "sc" / "meta.json").read_text())["converted_from"]
    assert meta["iter_num"] == 5000 and abs(meta["best_val_loss"] - 1.4697) < 1e-4

    # even with the flag, a pickle that names any Python global is refused
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"itos": Evil()}, f)
    with pytest.raises(GPT2KitError) as e:
        load_nanogpt(str(out / "ckpt.pt"), trust_pickle=True)
    one_line_error(e, "meta.pkl", "only plain")


def test_nanogpt_gpt2_checkpoint_with_padded_vocab(tmp_path):
    from gpt2kit.interop import load_any

    m = random_gpt(pad_vocab_multiple=64)  # nanoGPT's 50304-row table
    ck = _nanogpt_ckpt(m, dataset="openwebtext")
    assert ck["model_args"]["vocab_size"] == 50304
    torch.save(ck, tmp_path / "ckpt.pt")
    back, tok, info = load_any(str(tmp_path))  # a folder holding ckpt.pt
    assert info["source_format"] == "nanogpt" and tok.kind == "gpt2"
    assert back.config.vocab_size == 50257 and back.config.padded_vocab_size == 50304
    assert max_diff(logits(back), logits(m)) <= 1e-6


def test_nanogpt_reader_rejects_truncated_and_foreign_files(tmp_path):
    from gpt2kit.interop.nanogpt import load_nanogpt, read_meta_pkl

    torch.save(_nanogpt_ckpt(random_gpt(vocab_size=50, bias=False)), tmp_path / "ckpt.pt")
    raw = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GPT2KitError) as e:
        load_nanogpt(str(tmp_path / "cut.pt"))
    one_line_error(e, "cut.pt", "truncated")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(GPT2KitError) as e:
        load_nanogpt(str(tmp_path / "other.pt"))
    one_line_error(e, "other.pt", "not a nanoGPT checkpoint")
    torch.save({"f": os.getcwd}, tmp_path / "code.pt", _use_new_zipfile_serialization=True)  # weights_only refuses globals
    with pytest.raises(GPT2KitError) as e:
        load_nanogpt(str(tmp_path / "code.pt"))
    one_line_error(e, "code.pt")
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"itos": {0: "a"}})[:-5])
    with pytest.raises(GPT2KitError) as e:
        read_meta_pkl(str(tmp_path / "meta.pkl"), trust_pickle=True)
    one_line_error(e, "meta.pkl", "truncated")


# -- GGUF -------------------------------------------------------------------------------------------

def _gguf_fields(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    fields = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        fields[name] = f.contents()
    tensors = {t.name: t for t in r.tensors}
    return r, fields, tensors


def test_gguf_export_reads_back_completely(tmp_path):
    import gguf

    from gpt2kit.interop.gguf_export import export_gguf
    from gpt2kit.tokenization import get_tokenizer
    from gpt2kit.tokenization.gpt2 import load_encoder

    m = random_gpt(n_layer=2, pad_vocab_multiple=64)
    tok = get_tokenizer("gpt2")
    export_gguf(m, tok, str(tmp_path / "m.gguf"))
    r, fields, tensors = _gguf_fields(tmp_path / "m.gguf")
    encoder, merges = load_encoder()
    tokens = sorted(encoder, key=encoder.get)
    expected = {
        "general.architecture": "gpt2", "general.name": "m", "general.file_type": 0,
        "gpt2.block_count": 2, "gpt2.context_length": 64, "gpt2.embedding_length": 32,
        "gpt2.feed_forward_length": 128, "gpt2.attention.head_count": 2,
        "gpt2.attention.layer_norm_epsilon": pytest.approx(1e-5),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1] * 50256 + [3],
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges],
        "tokenizer.ggml.bos_token_id": 50256, "tokenizer.ggml.eos_token_id": 50256,
        "tokenizer.ggml.add_bos_token": False,
    }
    assert set(fields) == set(expected)
    for k, v in expected.items():
        assert fields[k] == v, k
    assert r.fields["gpt2.context_length"].types == [gguf.GGUFValueType.UINT32]

    sd = m.state_dict()
    C, V = 32, 50257
    want = {"token_embd.weight": sd["transformer.wte.weight"][:V], "position_embd.weight": sd["transformer.wpe.weight"],
            "output_norm.weight": sd["transformer.ln_f.weight"], "output_norm.bias": sd["transformer.ln_f.bias"],
            "output.weight": sd["transformer.wte.weight"][:V]}
    names = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
             "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    for i in range(2):
        for g, k in names.items():
            for p in ("weight", "bias"):
                want[f"blk.{i}.{g}.{p}"] = sd[f"transformer.h.{i}.{k}.{p}"]
    assert set(tensors) == set(want)
    for name, t in tensors.items():
        w = want[name].numpy()
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert list(t.shape) == list(reversed(w.shape)), name  # GGUF lists dims innermost first
        assert np.array_equal(np.asarray(t.data).reshape(w.shape), w), name
    # llama.cpp's loader expects these ne (innermost first)
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [C, 3 * C]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [4 * C, C]
    assert list(tensors["token_embd.weight"].shape) == [C, V]


def test_gguf_export_f16_and_char_vocabulary(tmp_path):
    import gguf

    from gpt2kit.interop.gguf_export import INERT_MERGE, export_gguf
    from gpt2kit.tokenization.gpt2 import bytes_to_unicode

    tok = char_tokenizer()  # includes 'é' (2 bytes) and the unknown token U+FFFD (3 bytes)
    m = random_gpt(vocab_size=tok.n_vocab, bias=False)
    export_gguf(m, tok, str(tmp_path / "c.gguf"), dtype="f16")
    _, fields, tensors = _gguf_fields(tmp_path / "c.gguf")
    b2u = bytes_to_unicode()
    spelled = ["".join(b2u[b] for b in tok.token_bytes(i)) for i in range(tok.n_vocab)]
    assert fields["tokenizer.ggml.tokens"] == spelled
    assert "\u010a" in spelled and "\u0120" in spelled  # '\n' and ' ' in byte-level spelling
    e_acute = "".join(b2u[b] for b in "é".encode())
    assert fields["tokenizer.ggml.merges"] == [f"{e_acute[0]} {e_acute[1]}", "ï ¿", "ï¿ ½"]
    assert fields["general.file_type"] == 1 and "tokenizer.ggml.eos_token_id" not in fields
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_qkv.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert not np.asarray(tensors["blk.0.attn_qkv.bias"].data).any()  # bias-free model: zero biases
    w = m.state_dict()["transformer.h.1.mlp.c_fc.weight"].numpy()
    assert np.array_equal(np.asarray(tensors["blk.1.ffn_up.weight"].data).reshape(w.shape), w.astype(np.float16))

    from gpt2kit.tokenization.char import CharTokenizer

    ascii_tok = CharTokenizer(list("abc "), unk=False)  # no multi-byte character: the inert merge keeps the key present
    export_gguf(random_gpt(vocab_size=4), ascii_tok, str(tmp_path / "a.gguf"))
    assert _gguf_fields(tmp_path / "a.gguf")[1]["tokenizer.ggml.merges"] == [INERT_MERGE]


def test_export_cli_all_formats(tmp_path):
    from gpt2kit.weights import save_model
    from gpt2kit.tokenization import get_tokenizer

    save_model(random_gpt(), tmp_path / "ck", tokenizer=get_tokenizer("gpt2"))
    for fmt, out in (("hf", "hf"), ("gguf", "m.gguf"), ("llmc", "m.bin")):
        r = cli("export", tmp_path / "ck", "--format", fmt, "--out", tmp_path / out)
        assert r.returncode == 0 and r.stdout.strip() == f"wrote {tmp_path / out} ({fmt})", r.stderr
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "merges.txt").exists()
    r = cli("export", tmp_path / "ck", "--format", "gguf", "--out", tmp_path / "hf")
    assert r.returncode == 2 and "is a directory" in r.stderr
    r = cli("export", tmp_path / "ck", "--format", "llmc", "--out", tmp_path / "x.bin", "--dtype", "float16")
    assert r.returncode == 2 and "float32 or bfloat16" in r.stderr and "Traceback" not in r.stderr


# -- llama.cpp itself ----------------------------------------------------------------------------

@pytest.mark.slow
def test_llama_cpp_greedy_tokens_equal_gpt2kit(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python compiles llama.cpp)")
    from gpt2kit.generation import generate
    from gpt2kit.interop.gguf_export import export_gguf
    from gpt2kit.tokenization import get_tokenizer

    m = random_gpt(n_layer=2, n_embd=64, n_head=4, block_size=128)
    tok = get_tokenizer("gpt2")
    export_gguf(m, tok, str(tmp_path / "m.gguf"))
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, n_threads=1, verbose=False, logits_all=False)
    text = "The quick brown fox jumps over the lazy dog, and"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    prompt = tok.encode(text)
    ours = list(generate(m, prompt, 20, temperature=0.0))
    theirs = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        theirs.append(t)
        if len(theirs) == 20:
            break
    assert theirs == ours and len(set(ours)) > 1


@pytest.mark.slow
def test_llama_cpp_reads_char_vocabularies(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from gpt2kit.generation import generate
    from gpt2kit.interop.gguf_export import export_gguf
    from gpt2kit.tokenization.char import CharTokenizer

    tok = CharTokenizer(sorted(set("First Citizen:\nBefore we proceed, café!")), unk=False)  # 'é': two bytes, one merge
    m = random_gpt(vocab_size=tok.n_vocab, bias=False, n_embd=64, n_head=4, block_size=128)
    export_gguf(m, tok, str(tmp_path / "c.gguf"))
    llm = llama_cpp.Llama(model_path=str(tmp_path / "c.gguf"), n_ctx=128, n_threads=1, verbose=False)
    text = "First Citizen:\nBefore we proceed, café!"
    prompt = tok.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == prompt
    ours = list(generate(m, prompt, 20, temperature=0.0))
    theirs = []
    for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(t)
        if len(theirs) == 20:
            break
    assert theirs == ours
    assert llm.detokenize(ours).decode() == tok.decode(ours)
