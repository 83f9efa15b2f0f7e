"""Evaluation: strided perplexity, LAMBADA and HellaSwag, each against a transformers computation."""
from __future__ import annotations

import functools
import http.server
import json
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2kit import evaluate as E
from gpt2kit.errors import GPT2KitError
from conftest import cli_in_process
from interop_helpers import random_gpt

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(*args):
    r = cli_in_process(*args)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """(gpt2kit model, transformers model loaded from its HF export, HF tokenizer, checkpoint dir)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpt2kit.interop.hf_export import export_hf
    from gpt2kit.tokenization import get_tokenizer
    from gpt2kit.weights import save_model

    d = tmp_path_factory.mktemp("eval")
    m = random_gpt(block_size=64)
    export_hf(m, get_tokenizer("gpt2"), str(d / "hf"))
    save_model(m, d / "ck", tokenizer=get_tokenizer("gpt2"))
    hf = AutoModelForCausalLM.from_pretrained(d / "hf").eval()
    return m, hf, AutoTokenizer.from_pretrained(d / "hf"), d / "ck"


def hf_strided_nll(hf, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """HF's perplexity-guide loop (labels -100 outside each window's new tokens), summing NLL per scored token."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss  # mean over the labels left after HF's shift
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss.item() * n
        n_tokens += n
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


# -- perplexity -----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_length,stride", [(64, 64), (32, 32), (32, 16), (32, 7), (16, 5)])
def test_perplexity_with_stride_equals_transformers(gpt2_pair, max_length, stride):
    m, hf, _, _ = gpt2_pair
    ids = torch.randint(0, 50257, (1, 150), generator=torch.Generator().manual_seed(1))
    r = E.perplexity(m, ids[0].numpy(), stride=stride, max_length=max_length, batch_size=3, progress=False)
    nll_sum, n = hf_strided_nll(hf, ids, max_length, stride)
    windows = len(range(0, 150 - max_length + stride, stride)) if stride < max_length else math.ceil(150 / max_length)
    assert r["tokens"] == n == (149 if stride < max_length else 150 - windows)  # window starts need context
    assert r["windows"] == windows
    assert r["nll"] == pytest.approx(nll_sum / n, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(nll_sum / n), rel=1e-5)


def test_sliding_windows_score_each_token_once():
    for n, L, s in [(150, 32, 7), (10, 32, 8), (64, 64, 63), (65, 64, 32), (100, 16, 1)]:
        scored = [j for b, e, first in E.sliding_windows(n, L, s) for j in range(first, e)]
        assert scored == list(range(1, n)), (n, L, s)
        assert all(e - b <= L for b, e, _ in E.sliding_windows(n, L, s))
    # disjoint windows (stride == max_length): each window's first token has no context
    assert E.sliding_windows(130, 64, 64) == [(0, 64, 1), (64, 128, 65), (128, 130, 129)]


def test_perplexity_cli_on_a_char_checkpoint_uses_its_tokenizer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2kit.interop.llmc import write_tokens
    from gpt2kit.tokenization import build_tokenizer
    from gpt2kit.weights import save_model, to_hf_state_dict

    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    tok = build_tokenizer("char", [text])
    m = random_gpt(vocab_size=tok.n_vocab, bias=True, block_size=32)
    save_model(m, tmp_path / "ck", tokenizer=tok)
    (tmp_path / "val.txt").write_text(text * 2)
    rc, out, err = run_cli("eval", "perplexity", "--model", tmp_path / "ck", "--data", tmp_path / "val.txt",
                           "--stride", "8", "--out", tmp_path / "r.json", "--no-progress")
    assert rc == 0, err
    saved = json.loads((tmp_path / "r.json").read_text())
    assert json.loads(out) == saved
    # the oracle tokenizes by hand (one id per character) and runs transformers
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    hf.load_state_dict(to_hf_state_dict(m), strict=False)
    ids = torch.tensor([[tok.chars.index(c) for c in text * 2]])
    nll_sum, n = hf_strided_nll(hf, ids, 32, 8)
    assert saved["tokens"] == n == len(text) * 2 - 1 and saved["stride"] == 8 and saved["max_length"] == 32
    assert saved["nll"] == pytest.approx(nll_sum / n, rel=1e-5)
    # an llm.c token file of the same ids gives the same numbers
    write_tokens(ids[0].numpy(), str(tmp_path / "val.bin"))
    rc, out, err = run_cli("eval", "perplexity", "--model", tmp_path / "ck", "--data", tmp_path / "val.bin", "--stride", "8", "--no-progress")
    assert rc == 0 and json.loads(out)["nll"] == pytest.approx(saved["nll"], rel=1e-9), err


def test_perplexity_reads_gpt2kit_token_files(tmp_path, gpt2_pair):
    from gpt2kit import data  # a broken import must fail this test, not skip it

    m, _, _, _ = gpt2_pair
    ids = np.random.default_rng(0).integers(0, 50257, 100)
    data.write_tokens(str(tmp_path / "val.bin"), ids, 50257)
    from gpt2kit.tokenization import get_tokenizer

    got = E.load_eval_tokens(str(tmp_path / "val.bin"), get_tokenizer("gpt2"))
    assert got.tolist() == ids.tolist()


def test_perplexity_rejects_bad_arguments(gpt2_pair, tmp_path):
    m, _, _, ck = gpt2_pair
    with pytest.raises(GPT2KitError, match="stride must be in 1..32"):
        E.perplexity(m, np.arange(10), stride=64, max_length=32)
    with pytest.raises(GPT2KitError, match="max_length must be in 1..64"):
        E.perplexity(m, np.arange(10), max_length=100)
    with pytest.raises(GPT2KitError, match="at least 2 tokens"):
        E.perplexity(m, np.arange(1))
    assert E.perplexity(m, np.arange(100), progress=False)["stride"] == 32  # default: half the context
    from gpt2kit.interop.llmc import write_tokens

    write_tokens([1, 2, 60000], str(tmp_path / "big.bin"))
    rc, _, err = run_cli("eval", "perplexity", "--model", ck, "--data", tmp_path / "big.bin", "--no-progress")
    assert rc == 2 and "another tokenizer" in err and err.count("\n") == 1
    rc, _, err = run_cli("eval", "perplexity", "--model", ck)
    assert rc == 2 and "--data PATH" in err


# -- LAMBADA ------------------------------------------------------------------------------------

def hf_lambada(hf, hf_tok, texts):
    """lm-eval-harness lambada_openai with transformers: (acc, ppl)."""
    correct, nll = 0, 0.0
    for text in texts:
        ctx, last = text.rsplit(" ", 1)
        c, t = hf_tok.encode(ctx), hf_tok.encode(" " + last)
        with torch.no_grad():
            logp = F.log_softmax(hf(torch.tensor([c + t])).logits[0], -1)[len(c) - 1 : -1]
        tt = torch.tensor(t)
        nll -= logp[torch.arange(len(t)), tt].sum().item()
        correct += bool((logp.argmax(-1) == tt).all())
    return correct / len(texts), math.exp(nll / len(texts))


def test_lambada_matches_transformers(gpt2_pair, tmp_path):
    m, hf, hf_tok, ck = gpt2_pair
    texts = [json.loads(line)["text"] for line in (FIXTURES / "lambada_tiny.jsonl").read_text().splitlines()]
    # add examples the random model gets right: a context followed by its own greedy next word
    made = []
    for text in texts:
        words = text.split(" ")
        for k in range(len(words) - 1, 3, -1):
            ctx = " ".join(words[:k])
            with torch.no_grad():
                t = int(hf(torch.tensor([hf_tok.encode(ctx)])).logits[0, -1].argmax())
            word = hf_tok.decode([t])
            if re.fullmatch(r" [A-Za-z]+", word) and hf_tok.encode(word) == [t]:
                made.append(ctx + word)
                break
    assert len(made) >= 2
    all_texts = texts + made
    with open(tmp_path / "lambada.jsonl", "w") as f:
        for t in all_texts:
            f.write(json.dumps({"text": t}) + "\n")

    acc, ppl = hf_lambada(hf, hf_tok, all_texts)
    assert 0 < acc < 1
    rc, out, err = run_cli("eval", "lambada", "--model", ck, "--data", tmp_path / "lambada.jsonl", "--batch-size", "3",
                           "--out", tmp_path / "r.json", "--no-progress")
    assert rc == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["task"] == "lambada" and r["examples"] == len(all_texts) and r["truncated"] == 0
    assert r["acc"] == acc
    assert r["ppl"] == pytest.approx(ppl, rel=1e-5)


# -- HellaSwag ------------------------------------------------------------------------------------

def hf_hellaswag_preds(hf, hf_tok, row):
    """nanoGPT/llm.c hellaswag.py with transformers: (argmin summed loss, argmin mean loss)."""
    ctx = hf_tok.encode(row["ctx"])
    sums, means = [], []
    for e in row["endings"]:
        end = hf_tok.encode(" " + e)
        with torch.no_grad():
            lg = hf(torch.tensor([ctx + end])).logits[0, :-1]
        losses = F.cross_entropy(lg, torch.tensor((ctx + end)[1:]), reduction="none")[-len(end):]
        sums.append(losses.sum().item())
        means.append(losses.mean().item())
    return int(np.argmin(sums)), int(np.argmin(means))


def test_hellaswag_matches_transformers(gpt2_pair, tmp_path):
    m, hf, hf_tok, ck = gpt2_pair
    rows = [json.loads(line) for line in (FIXTURES / "hellaswag_tiny.jsonl").read_text().splitlines()]
    preds = [hf_hellaswag_preds(hf, hf_tok, r) for r in rows]
    # labels chosen so that acc and acc_norm each count a known set of examples
    rows[0]["label"] = preds[0][0]
    rows[1]["label"] = preds[1][1]
    rows[2]["label"] = next(i for i in range(4) if i not in preds[2])
    acc = sum(p[0] == r["label"] for p, r in zip(preds, rows)) / 3
    acc_norm = sum(p[1] == r["label"] for p, r in zip(preds, rows)) / 3
    with open(tmp_path / "hs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    rc, out, err = run_cli("eval", "hellaswag", "--model", ck, "--data", tmp_path / "hs.jsonl", "--out", tmp_path / "r.json", "--no-progress")
    assert rc == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["task"] == "hellaswag" and r["examples"] == 3
    assert (r["acc"], r["acc_norm"]) == (acc, acc_norm)
    assert acc > 0 and acc_norm > 0


def test_long_examples_keep_their_last_tokens(tmp_path):
    """A 16-token model on the fixtures: contexts are cut from the left, scores equal a direct computation."""
    from gpt2kit.tokenization import get_tokenizer

    m = random_gpt(block_size=16)
    tok = get_tokenizer("gpt2")
    ex = E.hellaswag_examples(E.read_jsonl(str(FIXTURES / "hellaswag_tiny.jsonl")))
    ctx, endings, label = ex[0]
    r = E.hellaswag(m, tok, [ex[0]], progress=False)
    assert r["truncated_rows"] > 0
    sums = []
    for e in endings:
        row = (tok.encode(ctx) + tok.encode(" " + e))[-17:]
        n = len(tok.encode(" " + e))
        with torch.no_grad():
            lg = m(torch.tensor([row[:-1]]))[0][0]
        sums.append(F.cross_entropy(lg, torch.tensor(row[1:]), reduction="none")[-n:].sum().item())
    assert r["acc"] == float(int(np.argmin(sums)) == label)
    lam = E.lambada_examples(E.read_jsonl(str(FIXTURES / "lambada_tiny.jsonl")))
    assert E.lambada(m, tok, lam, progress=False)["truncated"] == len(lam)


# -- data files and downloads -----------------------------------------------------------------------

def test_bad_eval_files_name_the_file_and_line(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text('{"text": "a b c"}\n{"text": "cut sho')
    with pytest.raises(GPT2KitError, match=r"l.jsonl line 2 is not valid JSON"):
        E.read_jsonl(str(p))
    p.write_text('{"ctx": "x", "endings": ["a", "b"]}\n')
    with pytest.raises(GPT2KitError, match=r"h.jsonl example 1 lacks 'ctx', 'endings' or a valid 'label'"):
        E.hellaswag_examples(E.read_jsonl(str(p)), "h.jsonl")
    with pytest.raises(GPT2KitError, match="no 'text' with a context and a last word"):
        E.lambada_examples([{"text": "oneword"}])
    with pytest.raises(GPT2KitError, match="data file not found"):
        E.read_jsonl(str(tmp_path / "nope.jsonl"))


def test_offline_download_names_data_flag(tmp_path, monkeypatch, gpt2_pair):
    _, _, _, ck = gpt2_pair
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(E.DATASETS, "lambada", ("http://127.0.0.1:9/lambada_test.jsonl", "lambada_test.jsonl"))
    rc, _, err = run_cli("eval", "lambada", "--model", ck, "--no-progress")
    assert rc == 2 and err.count("\n") == 1
    assert "cannot download http://127.0.0.1:9/lambada_test.jsonl" in err and "--data PATH" in err and "lambada_test.jsonl" in err


def test_download_once_into_the_cache(tmp_path, monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FIXTURES))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hellaswag_tiny.jsonl"
        monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path))
        monkeypatch.setitem(E.DATASETS, "hellaswag", (url, "hellaswag_val.jsonl"))
        path = E.fetch_dataset("hellaswag", progress=False)
        assert Path(path) == tmp_path / "eval" / "hellaswag_val.jsonl"
        assert Path(path).read_bytes() == (FIXTURES / "hellaswag_tiny.jsonl").read_bytes()
    finally:
        server.shutdown()
    assert E.fetch_dataset("hellaswag", progress=False) == path  # cached: no server needed
