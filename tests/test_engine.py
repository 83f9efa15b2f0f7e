"""The inference engine against a plain full forward of transformers' GPT2LMHeadModel on the same random weights.

Every logit the engine samples from is checked (1e-5) while rows of different lengths join and
leave mid-batch, share prefixes (reused KV blocks), are prefilled in chunks, and are preempted
when the KV pool runs out. Small blocks (4 positions) and small budgets make every path run.
"""
import random

import pytest
import torch

from conftest import hf_model, ours_from_hf
from gpt2kit.inference import engine as core
from gpt2kit.sampling_params import SamplingParams

V, CTX = 97, 48
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def pair():
    hf = hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=CTX, vocab_size=V)
    return hf, ours_from_hf(hf)


@pytest.fixture
def seen_logits(monkeypatch):
    """Every (row, logits) the engine samples from."""
    log = []
    real = core.sample_rows

    def spy(logits, rows):
        log.extend(zip(rows, logits.clone()))
        return real(logits, rows)

    monkeypatch.setattr(core, "sample_rows", spy)
    return log


def hf_logits(hf, tokens):
    """The next-token logits after `tokens` by a full forward over the last CTX tokens (nanoGPT's crop)."""
    with torch.no_grad():
        return hf(torch.tensor([tokens[-CTX:]])).logits[0, -1]


def check_against_hf(hf, rows, seen):
    by_row = {}
    for sampler, logits in seen:
        by_row.setdefault(id(sampler), []).append(logits)
    for row in rows:
        got = by_row[id(row.sampler)]
        assert len(got) == row.generated
        for k, logits in enumerate(got):
            history = row.tokens[: row.prompt_len + k]
            ref = hf_logits(hf, history)
            assert (logits - ref).abs().max().item() <= 1e-5, (row.index, k)
            assert row.tokens[row.prompt_len + k] == int(ref.argmax())


def prompts(n, lo, hi, seed=0, prefix=()):
    rnd = random.Random(seed)
    return [list(prefix) + [rnd.randrange(V) for _ in range(rnd.randint(lo, hi))] for _ in range(n)]


def run(engine, waves):
    """Add each wave of (prompt, max_tokens) after `gap` steps of the previous one; step until done."""
    rows = []
    for gap, wave in waves:
        for _ in range(gap):
            engine.step()
        rows += [engine.add(p, GREEDY, max_tokens=m, index=len(rows)) for p, m in wave]
    while engine.has_work:
        engine.step()
    return rows


def test_rows_joining_and_leaving_mid_batch_in_chunks(pair, seen_logits):
    hf, ours = pair
    engine = core.Engine(ours, kv_blocks=64, max_rows=6, max_step_tokens=10, block_len=4)
    ps = prompts(9, 1, 30)
    waves = [(0, [(p, m) for p, m in zip(ps[:3], (5, 20, 9))]), (3, [(p, m) for p, m in zip(ps[3:6], (12, 3, 25))]),
             (7, [(p, m) for p, m in zip(ps[6:], (30, 1, 8))])]
    rows = run(engine, waves)
    check_against_hf(hf, rows, seen_logits)
    assert engine.pool.num_free == engine.pool.num_blocks - 1  # every block back in the pool (free or cached)


def test_prefix_shared_rows_reuse_cached_blocks(pair, seen_logits):
    hf, ours = pair
    engine = core.Engine(ours, kv_blocks=64, max_rows=8, max_step_tokens=16, block_len=4)
    shared = prompts(1, 21, 21, seed=5)[0]
    rows = run(engine, [(0, [(p, 6) for p in prompts(4, 0, 9, seed=1, prefix=shared)]),
                        (2, [(p, 6) for p in prompts(3, 1, 5, seed=2, prefix=shared[:13])])])
    check_against_hf(hf, rows, seen_logits)
    assert engine.pool.hits >= 3 * 5 + 3 * 3  # later rows took the shared blocks instead of computing them


def test_samples_of_one_prompt_wait_for_its_blocks_then_start_together(pair, monkeypatch):
    _, ours = pair
    engine = core.Engine(ours, kv_blocks=64, max_rows=8, max_step_tokens=256, block_len=4)
    plans, plan = [], engine.scheduler.plan
    monkeypatch.setattr(engine.scheduler, "plan", lambda: (w := plan(), plans.append([n for _, n in w]))[0])
    prompt = prompts(1, 18, 18, seed=3)[0]
    for i in range(4):
        engine.add(prompt, GREEDY, max_tokens=3, index=i)
    engine.step()
    engine.step()
    # the others wait for the blocks the first row computes, then start in one step on its 4 full blocks
    assert plans == [[18], [1, 2, 2, 2]]


def test_pool_exhaustion_preempts_and_every_row_stays_exact(pair, seen_logits):
    hf, ours = pair
    engine = core.Engine(ours, kv_blocks=14, max_rows=8, max_step_tokens=12, block_len=4)  # 13 blocks: ~1 context
    rows = run(engine, [(0, [(p, 20) for p in prompts(6, 5, 25, seed=3)])])
    check_against_hf(hf, rows, seen_logits)
    assert engine.scheduler.preempted_total > 0


def test_windows_past_the_context_slide_like_nanogpt(pair, seen_logits):
    hf, ours = pair
    engine = core.Engine(ours, kv_blocks=40, max_rows=3, max_step_tokens=CTX * 3, block_len=4)
    rows = run(engine, [(0, [(p, 30) for p in prompts(3, 30, 47, seed=4)])])
    check_against_hf(hf, rows, seen_logits)
    assert all(r.window_start > 0 for r in rows)


def test_scoring_rows_give_prompt_logprobs_with_reuse(pair):
    """score(): each token's log-probability and top alternatives equal log_softmax of the full forward;
    rows after the first reuse the shared context's blocks and their stored log-probabilities."""
    hf, ours = pair
    engine = core.Engine(ours, kv_blocks=64, max_rows=4, max_step_tokens=16, block_len=4)
    context = prompts(1, 25, 25, seed=6)[0]
    rows = prompts(4, 1, 6, seed=7, prefix=context)
    got = engine.score(rows)
    assert engine.pool.hits >= 3 * 6
    for r, lps in zip(rows, got):
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([r])).logits[0], -1)
        assert lps[0] is None
        for i in range(1, len(r)):
            lp, top = lps[i]
            assert abs(lp - ref[i - 1, r[i]].item()) <= 1e-5
            vals, ids = ref[i - 1].topk(5)
            assert [t for t, _ in top[:5]] == ids.tolist()
            assert max(abs(a - b) for (_, a), b in zip(top[:5], vals.tolist())) <= 1e-5


def test_penalties_and_logit_bias_against_a_hand_computed_reference(pair):
    """Greedy with presence/frequency penalties (output tokens only), repetition penalty (prompt and output)
    and logit_bias, against the same adjustments applied to transformers' logits by hand."""
    hf, ours = pair
    prompt = prompts(1, 6, 6, seed=8)[0]
    params = SamplingParams(temperature=0, presence_penalty=0.7, frequency_penalty=0.4, repetition_penalty=1.3,
                            logit_bias=((3, 5.0), (11, -100.0)))
    engine = core.Engine(ours, max_rows=1)
    row = engine.add(prompt, params, max_tokens=25)
    while engine.has_work:
        engine.step()
    seq = list(prompt)
    for _ in range(25):
        z = hf_logits(hf, seq).clone()
        z[3] += 5.0
        z[11] -= 100.0
        for t in set(seq):
            z[t] = z[t] / 1.3 if z[t] > 0 else z[t] * 1.3
        for t in set(seq[len(prompt):]):
            z[t] -= 0.7 + 0.4 * seq[len(prompt):].count(t)
        seq.append(int(z.argmax()))
    assert row.tokens == seq
    assert 11 not in row.tokens[len(prompt):] and len(set(row.tokens[len(prompt):])) > 5


def test_a_seeded_row_samples_the_same_alone_or_batched(pair):
    hf, ours = pair
    params = SamplingParams(temperature=1.0, top_p=0.95)
    p = prompts(1, 8, 8, seed=9)[0]

    def sample(others):
        engine = core.Engine(ours, max_rows=8, max_step_tokens=64)
        row = engine.add(p, params, max_tokens=30, seed=1234)
        for q in prompts(others, 3, 30, seed=10):
            engine.add(q, SamplingParams(temperature=0.7, top_k=5), max_tokens=30, seed=7)
        while engine.has_work:
            engine.step()
        return row.tokens

    assert sample(0) == sample(5)


def test_a_pool_smaller_than_one_context_is_refused(pair):
    from gpt2kit.errors import GPT2KitError

    with pytest.raises(GPT2KitError, match="cannot hold one context of 48 tokens: give at least 13 blocks"):
        core.Engine(pair[1], kv_blocks=12, block_len=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_taken_block_is_zero_in_every_layer(dtype):
    """A block comes back zeroed (NaN left by an earlier row must not reach a masked attention product)."""
    from gpt2kit.config import GPTConfig
    from gpt2kit.inference.kv import BlockPool

    pool = BlockPool(GPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=64, vocab_size=10), 4, dtype=dtype)
    b = pool.take()
    pool.k[:, b] = float("nan")
    pool.v[:, b] = 1.0
    pool.k[:, b + 1] = 2.0
    pool.release([b])
    assert pool.take() == b
    assert not pool.k[:, b].any() and not pool.v[:, b].any()
    assert (pool.k[:, b + 1] == 2.0).all()  # its neighbour is untouched
