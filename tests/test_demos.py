"""The babyGPT and addition demos: data encoding, splits, and what the babyGPT learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2kit.cli import main as cli_main
from gpt2kit.demos import addition, babygpt

# -- babyGPT ---------------------------------------------------------------------------------


def test_babygpt_windows_and_counts():
    X, Y = babygpt.training_pairs()
    assert X.shape == (12, 3) and Y.shape == (12,)
    assert "".join(map(str, X[0].tolist())) + str(int(Y[0])) == "1111"
    assert "".join(map(str, X[-1].tolist())) + str(int(Y[-1])) == "1110"
    # 111101111011110: 111 is followed by 1 three times and by 0 three times; 110, 101, 011 always by 1
    want = {s: (0, 0) for s in babygpt.states()}
    want.update({"111": (3, 3), "110": (0, 2), "101": (0, 2), "011": (0, 2)})
    assert babygpt.counts() == want


@pytest.mark.parametrize("seed", [1337, 0])
def test_babygpt_learns_the_transitions_of_the_sequence(seed):
    torch.set_num_threads(1)
    r = babygpt.run(steps=babygpt.STEPS, seed=seed)
    before, after = dict(zip(r["states"], r["before"])), dict(zip(r["states"], r["after"]))
    assert all(abs(p - 0.5) < 0.1 for p in before.values())  # untrained: a coin flip everywhere
    for s, (n0, n1) in r["counts"].items():
        if n0 + n1 and (n0 == 0 or n1 == 0):  # deterministic in the data
            p_observed = after[s] if n1 else 1 - after[s]
            assert p_observed >= 0.9, (s, p_observed)
    assert abs(after["111"] - 0.5) < 0.1  # 3 vs 3 in the data
    assert r["losses"][-1] < r["losses"][0]


def test_babygpt_cli_prints_the_table_and_writes_the_png(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert cli_main(["demo", "babygpt", "--steps", "200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    r = babygpt.run(steps=200, seed=1337)
    for s, b, a in zip(r["states"], r["before"], r["after"]):
        row = next(line for line in text.splitlines() if line.strip().startswith(s + " "))
        assert row.split()[1:3] == [f"{b:.3f}", f"{a:.3f}"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    h, w, _ = matplotlib.image.imread(out).shape
    assert w > 600 and h > 300


def test_babygpt_cli_rejects_a_missing_directory(tmp_path, capsys):
    assert cli_main(["demo", "babygpt", "--out", str(tmp_path / "no" / "g.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- addition --------------------------------------------------------------------------------


def test_addition_encoding_matches_mingpt_examples():
    # minGPT adder.py's docstring: 85 + 50 = 135 -> "8550531"; 6 + 39 = 45 -> "0639054"
    assert addition.encode(85, 50, 2) == [8, 5, 5, 0, 5, 3, 1]
    assert addition.encode(6, 39, 2) == [0, 6, 3, 9, 5, 4, 0]
    assert addition.decode_sum([5, 3, 1]) == 135
    for a in range(100):
        for b in range(100):
            assert addition.decode_sum(addition.encode(a, b, 2)[4:]) == a + b
    assert addition.problem(8550, 2) == (85, 50)


def test_addition_batch_masks_everything_but_the_sum():
    x, y = addition.batch(np.array([8550, 639]), 2)
    assert x.tolist() == [[8, 5, 5, 0, 5, 3], [0, 6, 3, 9, 5, 4]]
    assert y.tolist() == [[-1, -1, -1, 5, 3, 1], [-1, -1, -1, 5, 4, 0]]


def test_addition_split_is_disjoint():
    split = addition.Split(2, 1000, seed=3)
    test = set(split.test.tolist())
    assert len(test) == 1000 and all(0 <= i < 10_000 for i in test)
    drawn = np.concatenate([split.train_batch(256) for _ in range(100)])
    assert len(drawn) == 25_600 and not test & set(drawn.tolist())
    assert len(set(drawn.tolist())) > 8000  # the draws cover most of the 9000 training problems
    probe = np.arange(10_000)
    assert split.is_test(probe).tolist() == [i in test for i in range(10_000)]


def test_addition_solve_matches_a_plain_greedy_loop():
    """solve() (batched gpt2kit.generate with its KV cache) = argmax over full re-runs, on a briefly trained model."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    split = addition.Split(2, 200, seed=0)
    model = addition.GPT(addition.model_config(2))
    addition.train(model, split, steps=30, batch_size=64, log=None)
    got = addition.solve(model, split.test, 2)
    idx = torch.tensor([addition.encode(*addition.problem(i, 2), 2)[:4] for i in split.test])  # (N, 4)
    with torch.no_grad():
        for _ in range(3):
            idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    want = [addition.decode_sum(row[4:]) for row in idx.tolist()]
    assert got.tolist() == want
    acc, _ = addition.accuracy(model, split.test, 2)
    true = [sum(addition.problem(i, 2)) for i in split.test]
    assert acc == np.mean(np.array(want) == np.array(true))


def test_addition_lr_schedule():
    assert addition.lr_at(0, 1000, 1e-3) == pytest.approx(1e-5)
    assert addition.lr_at(99, 1000, 1e-3) == pytest.approx(1e-3)
    assert addition.lr_at(999, 1000, 1e-3) == pytest.approx(1e-4, rel=1e-3)


def test_addition_rejects_bad_sizes(capsys):
    assert cli_main(["demo", "addition", "--digits", "7"]) == 2
    assert "--digits must be in 1..6" in capsys.readouterr().err
    assert cli_main(["demo", "addition", "--digits", "1", "--test-size", "100"]) == 2
    assert "held-out set must hold 1..99" in capsys.readouterr().err
