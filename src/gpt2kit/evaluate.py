"""Evaluation: sliding-window perplexity, LAMBADA, HellaSwag.

perplexity   The strided sliding window of HF's guide "Perplexity of fixed-length models":
             windows of max_length tokens start every `stride` tokens, and each window scores
             only the tokens the previous window did not, so with stride < max_length every
             token after the first is scored exactly once, with up to max_length - 1 tokens of
             context. stride == max_length gives disjoint windows whose first tokens, having no
             context, go unscored. The result is exp(sum of NLL / number of scored tokens). (The
             guide's code weights each window's mean loss by trg_len - 1 instead of the count
             of scored tokens; summing per-token NLL avoids that off-by-one.)
lambada      OpenAI's lambada_test.jsonl ({"text": ...}), as lm-evaluation-harness's
             lambada_openai: context = text up to the last space, target = " " + last word.
             acc: every target token is the greedy (argmax) prediction; ppl: exp of the mean
             over examples of the target's summed NLL.
hellaswag    The official hellaswag_val.jsonl ({"ctx", "endings", "label"}), as llm.c's and
             nanoGPT's hellaswag.py: each ending (" " + ending) is scored after the context;
             acc picks the ending with the lowest summed loss, acc_norm the lowest mean loss
             per token.

Scoring runs on the inference engine (inference/engine.py), as generation and the server do:
HellaSwag's endings share their context's KV blocks. Sequences longer than the model's context
keep their last block_size tokens (the target is always kept whole). Results are dicts; write_result stores one as JSON, atomically.
"""
from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request

import numpy as np
import torch

from .corpora import cache_dir
from .errors import GPT2KitError
from .fileio import atomic_path, write_json_atomic
from .inference.engine import Engine
from .inference.kv import BLOCK_LEN

DATASETS = {  # task -> (published URL, file name)
    "lambada": ("https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl", "lambada_test.jsonl"),
    "hellaswag": ("https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl", "hellaswag_val.jsonl"),
}


def _bar(iterable=None, total=None, desc="", progress=True):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)


# -- data ------------------------------------------------------------------------------------

def fetch_dataset(task: str, progress: bool = True) -> str:
    """Local path of a task's published data file, downloaded once into cache_dir("eval")."""
    url, name = DATASETS[task]
    path = os.path.join(cache_dir("eval"), name)
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir("eval"), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r, atomic_path(path) as tmp, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with _bar(total=total, desc=f"download {name}", progress=progress) as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise GPT2KitError(f"cannot download {url} ({reason}); offline? give a local copy of {name} as data=PATH") from None
    return path


def read_jsonl(path: str) -> list[dict]:
    out = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise GPT2KitError(f"data file not found: {path}") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise GPT2KitError(f"{path} line {i} is not valid JSON ({e.msg}); is the file truncated?") from None
            if not isinstance(row, dict):
                raise GPT2KitError(f"{path} line {i} is not a JSON object")
            out.append(row)
    if not out:
        raise GPT2KitError(f"{path} holds no examples")
    return out


def load_eval_tokens(path: str, tokenizer) -> np.ndarray:
    """Token ids to score: a text file (tokenized with the model's tokenizer), a token file
    written by `gpt2kit prepare` (data.py) or llm.c (header magic 20240520), or a prepared data
    dir (or its meta.json): its val split."""
    from .interop import llmc
    from .shards import INDEX

    if os.path.isdir(path) or os.path.basename(path) == INDEX:
        return _prepared_val_tokens(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise GPT2KitError(f"data file not found: {path}") from None
    if head == b"GPT2KTOK":
        from .data import read_tokens  # gpt2kit's own token files

        return np.asarray(read_tokens(path))
    if llmc.sniff(path) == llmc.TOKENS_MAGIC:
        return llmc.read_tokens(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise GPT2KitError(f"{path} is neither UTF-8 text nor a gpt2kit/llm.c token file") from None
    return np.asarray(tokenizer.encode_ordinary(text), dtype=np.int64)


def _prepared_val_tokens(path: str) -> np.ndarray:
    """The val split of a prepared data dir (or of its meta.json), its shards in order."""
    from .data import read_tokens
    from .shards import read_index

    index = read_index(path)
    shards = [np.asarray(read_tokens(index.path(s))) for s in index.split("val")]
    if not shards:
        raise GPT2KitError(f"{path} has no val shards; re-run `gpt2kit prepare`")
    return shards[0] if len(shards) == 1 else np.concatenate(shards)


# -- scoring helpers -------------------------------------------------------------------------

def _scorer(model, batch_size: int) -> Engine:
    """The inference engine, as a scorer: rows sharing a prefix (HellaSwag's endings) reuse its KV blocks."""
    T = model.config.block_size
    return Engine(model, max_rows=batch_size, max_step_tokens=max(T, 1024), kv_blocks=1 + batch_size * -(-T // BLOCK_LEN))


def _token_nll(engine: Engine, rows: list[list[int]]) -> list[torch.Tensor]:
    """Per-position NLL of each row's next token: row r (at most block_size tokens) gives a (len(r) - 1,) float64 tensor."""
    return [-torch.tensor([e[0] for e in lps[1:]], dtype=torch.float64) for lps in engine.score(rows)]


def _check_ids(ids, vocab_size: int, what: str):
    if len(ids) and (int(np.min(ids)) < 0 or int(np.max(ids)) >= vocab_size):
        raise GPT2KitError(f"{what} has token ids up to {int(np.max(ids))} but the model's vocabulary has {vocab_size}; was it made with another tokenizer?")


# -- perplexity ------------------------------------------------------------------------------

def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each window, as in HF's guide."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        out.append((begin, end, max(prev_end, begin + 1)))  # position 0 has no context: never scored
        prev_end = end
        if end == n_tokens:
            break
    return out


@torch.inference_mode()
def perplexity(model, tokens, *, stride: int | None = None, max_length: int | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    """{'tokens', 'nll', 'ppl', ...} of a token sequence under the strided sliding window.

    max_length defaults to the model's context, stride to half of it (512 for GPT-2, as in HF's guide).
    """
    max_length = max_length or model.config.block_size
    if not 1 <= max_length <= model.config.block_size:
        raise GPT2KitError(f"max_length must be in 1..{model.config.block_size} (the model's context), got {max_length}")
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise GPT2KitError(f"stride must be in 1..{max_length} (the window length), got {stride}")
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size < 2:
        raise GPT2KitError(f"perplexity needs at least 2 tokens, the data has {tokens.size}")
    _check_ids(tokens, model.config.vocab_size, "the data")
    windows = sliding_windows(tokens.size, max_length, stride)
    engine = _scorer(model, batch_size)
    total, count = 0.0, 0
    bar = _bar(total=len(windows), desc="perplexity", progress=progress)
    i = 0
    while i < len(windows):
        group = [windows[i]]  # batch windows of the same length
        while len(group) < batch_size and i + len(group) < len(windows) and windows[i + len(group)][1] - windows[i + len(group)][0] == group[0][1] - group[0][0]:
            group.append(windows[i + len(group)])
        rows = [tokens[b:e].tolist() for b, e, _ in group]
        for (b, e, s), nll in zip(group, _token_nll(engine, rows)):
            scored = nll[s - b - 1 :]  # nll[j] is the loss of token b + j + 1
            total += float(scored.sum())
            count += scored.numel()
        i += len(group)
        bar.update(len(group))
        bar.set_postfix(ppl=f"{math.exp(total / count):.3f}")
    bar.close()
    nll = total / count
    return {"task": "perplexity", "tokens": count, "nll": nll, "ppl": math.exp(nll),
            "stride": stride, "max_length": max_length, "windows": len(windows)}


# -- LAMBADA ----------------------------------------------------------------------------------

def lambada_examples(rows: list[dict], path: str = "data") -> list[tuple[str, str]]:
    """(context, target) pairs: target is ' ' + the last word, as lambada_openai splits it."""
    out = []
    for i, row in enumerate(rows, 1):
        text = row.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise GPT2KitError(f"{path} example {i} has no 'text' with a context and a last word; expected OpenAI's lambada_test.jsonl format")
        ctx, last = text.rsplit(" ", 1)
        out.append((ctx, " " + last))
    return out


@torch.inference_mode()
def lambada(model, tokenizer, examples: list[tuple[str, str]], *, batch_size: int = 16, progress: bool = True) -> dict:
    T = model.config.block_size
    n_correct, nll_sum, truncated = 0, 0.0, 0
    encoded = []
    for ctx, tgt in examples:
        c, t = tokenizer.encode_ordinary(ctx), tokenizer.encode_ordinary(tgt)
        if len(t) >= T:
            raise GPT2KitError(f"a LAMBADA target of {len(t)} tokens does not fit the model's context of {T}")
        row = c + t
        if len(row) > T:
            row, truncated = row[-T:], truncated + 1
        encoded.append((row, len(t)))
    engine = _scorer(model, batch_size)
    bar = _bar(total=len(encoded), desc="lambada", progress=progress)
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        for (r, n), lps in zip(chunk, engine.score([r for r, _ in chunk])):
            target = list(zip(r[-n:], lps[-n:]))  # each target token with its (logprob, top alternatives)
            nll_sum += -sum(lp for _, (lp, _) in target)
            n_correct += all(tok == top[0][0] for tok, (_, top) in target)  # greedy: the argmax is the target
        bar.update(len(chunk))
        bar.set_postfix(acc=f"{n_correct / min(i + batch_size, len(encoded)):.4f}")
    bar.close()
    n = len(encoded)
    return {"task": "lambada", "examples": n, "acc": n_correct / n, "ppl": math.exp(nll_sum / n), "truncated": truncated}


# -- HellaSwag ------------------------------------------------------------------------------

def hellaswag_examples(rows: list[dict], path: str = "data") -> list[tuple[str, list[str], int]]:
    out = []
    for i, row in enumerate(rows, 1):
        ctx, endings, label = row.get("ctx"), row.get("endings"), row.get("label")
        try:
            label = int(label)
        except (TypeError, ValueError):
            label = -1
        if not isinstance(ctx, str) or not isinstance(endings, list) or not endings or not all(isinstance(e, str) for e in endings) or not 0 <= label < len(endings):
            raise GPT2KitError(f"{path} example {i} lacks 'ctx', 'endings' or a valid 'label'; expected the official hellaswag_val.jsonl format")
        out.append((ctx, endings, label))
    return out


@torch.inference_mode()
def hellaswag(model, tokenizer, examples: list[tuple[str, list[str], int]], *, progress: bool = True) -> dict:
    T = model.config.block_size
    n_acc = n_norm = truncated = 0
    engine = _scorer(model, 4)
    bar = _bar(examples, desc="hellaswag", progress=progress)
    for k, (ctx, endings, label) in enumerate(bar, 1):
        c = tokenizer.encode_ordinary(ctx)
        rows, lens = [], []
        for e in endings:
            t = tokenizer.encode_ordinary(" " + e)
            if len(t) >= T:
                raise GPT2KitError(f"a HellaSwag ending of {len(t)} tokens does not fit the model's context of {T}")
            r = c + t
            if len(r) > T:
                r, truncated = r[-T:], truncated + 1
            rows.append(r)
            lens.append(len(t))
        sums, means = [], []
        for nll, n in zip(_token_nll(engine, rows), lens):
            s = float(nll[-n:].sum())  # the ending's tokens only
            sums.append(s)
            means.append(s / n)
        n_acc += int(np.argmin(sums)) == label
        n_norm += int(np.argmin(means)) == label
        bar.set_postfix(acc_norm=f"{n_norm / k:.4f}")
    n = len(examples)
    return {"task": "hellaswag", "examples": n, "acc": n_acc / n, "acc_norm": n_norm / n, "truncated_rows": truncated}


def write_result(path: str, result: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    write_json_atomic(path, result)
