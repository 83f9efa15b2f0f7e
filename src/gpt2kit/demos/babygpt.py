"""babyGPT: a GPT with vocabulary {0, 1} and context 3 is a finite-state Markov chain.

After Karpathy's "GPT as a finite-state markov chain". The model sees the last 3 tokens,
so its whole behaviour is 8 numbers: P(next = 1) for each state 000 .. 111. Sampling a
token moves the chain from state abc to bc0 or bc1. We train on the windows of
`111101111011110`, print P(next = 1) per state before and after, next to the counts in
the sequence, and draw the state graph (edge width follows probability).

Karpathy's recipe (n_layer=4, n_head=4, n_embd=16, no biases, AdamW lr 1e-3, wd 1e-1, all
12 windows as one batch) reaches only P ~ 0.8 on the deterministic transitions after his 50
steps; the default here is 200 steps of the same recipe, where they pass 0.95.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..config import GPTConfig
from ..errors import GPT2KitError
from ..fileio import atomic_path
from ..model import GPT

SEQUENCE = "111101111011110"
CONTEXT = 3
STEPS = 200


def states(context: int = CONTEXT) -> list[str]:
    """Every context the model can see: '000', '001', ..., '111'."""
    return [format(i, f"0{context}b") for i in range(2**context)]


def training_pairs(seq: str = SEQUENCE, context: int = CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """All (window, next token) pairs of seq: X (N, context), Y (N,)."""
    if len(seq) <= context or set(seq) - {"0", "1"}:
        raise GPT2KitError(f"the training sequence must be 0s and 1s, longer than the context ({context}); got {seq!r}")
    bits = [int(c) for c in seq]
    X = torch.tensor([bits[i : i + context] for i in range(len(bits) - context)])  # (N, context)
    Y = torch.tensor([bits[i + context] for i in range(len(bits) - context)])  # (N,)
    return X, Y


def counts(seq: str = SEQUENCE, context: int = CONTEXT) -> dict[str, tuple[int, int]]:
    """state -> (times followed by 0, times followed by 1) in seq."""
    out = {s: [0, 0] for s in states(context)}
    for i in range(len(seq) - context):
        out[seq[i : i + context]][int(seq[i + context])] += 1
    return {s: (a, b) for s, (a, b) in out.items()}


def new_model(seed: int, context: int = CONTEXT) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=context, vocab_size=2, n_layer=4, n_head=4, n_embd=16, bias=False))


@torch.no_grad()
def next_one_probs(model: GPT, context: int = CONTEXT) -> np.ndarray:
    """P(next = 1) for each state, in states() order: (2**context,)."""
    model.eval()
    X = torch.tensor([[int(c) for c in s] for s in states(context)])  # (8, context)
    logits, _ = model(X)  # (8, context, 2)
    return torch.softmax(logits[:, -1], dim=-1)[:, 1].numpy()  # (8,)


def train(model: GPT, X: torch.Tensor, Y: torch.Tensor, steps: int, lr: float = 1e-3, weight_decay: float = 1e-1) -> list[float]:
    """Full-batch AdamW on the last position's prediction; returns the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for _ in range(steps):
        logits, _ = model(X)  # (N, context, 2)
        loss = F.cross_entropy(logits[:, -1], Y)  # only the full-context prediction is a state transition
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def run(steps: int = STEPS, seed: int = 1337, seq: str = SEQUENCE) -> dict:
    """Train a babyGPT; return its states, P(next=1) before/after, the counts and the losses."""
    X, Y = training_pairs(seq)
    model = new_model(seed)
    before = next_one_probs(model)
    losses = train(model, X, Y, steps)
    return {"states": states(), "before": before, "after": next_one_probs(model), "counts": counts(seq),
            "losses": losses, "steps": steps, "seq": seq, "model": model}


def table(result: dict) -> str:
    lines = [f"{'state':>5}  {'P(1) before':>11}  {'P(1) after':>10}  {'seen ->0':>8}  {'seen ->1':>8}  {'data P(1)':>9}"]
    for s, b, a in zip(result["states"], result["before"], result["after"]):
        n0, n1 = result["counts"][s]
        data = f"{n1 / (n0 + n1):9.2f}" if n0 + n1 else f"{'unseen':>9}"
        lines.append(f"{s:>5}  {b:11.3f}  {a:10.3f}  {n0:8d}  {n1:8d}  {data}")
    return "\n".join(lines)


# -- the state graph ----------------------------------------------------------------------------

# The de Bruijn graph of 3-bit states, laid out so that no two edges cross: the all-0 and
# all-1 states at the ends (each with a self-loop), 010 <-> 101 side by side in the middle.
POSITIONS = {"000": (0.0, 0.0), "001": (2.0, 1.7), "100": (2.0, -1.7), "010": (3.2, 0.0),
             "101": (4.8, 0.0), "011": (6.0, 1.7), "110": (6.0, -1.7), "111": (8.0, 0.0)}
NODE_R = 0.42


def draw_graph(result: dict, path: str | os.PathLike) -> None:
    """Write the Markov chain of the trained model as a PNG (written atomically)."""
    from ..extras import require

    Figure = require("matplotlib.figure", "the babygpt graph").Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.patches import Circle, FancyArrowPatch

    probs = dict(zip(result["states"], result["after"]))
    fig = Figure(figsize=(11, 5.6), dpi=110)
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(-1.7, 9.7)
    ax.set_ylim(-2.4, 2.4)
    for s, (x, y) in POSITIONS.items():
        n0, n1 = result["counts"][s]
        seen = n0 + n1 > 0
        ax.add_patch(Circle((x, y), NODE_R, facecolor="#dbe9f6" if seen else "#eeeeee", edgecolor="#1f4e79" if seen else "#999999", lw=1.5, zorder=3))
        ax.text(x, y, s, ha="center", va="center", fontsize=13, family="monospace", zorder=4)
    for s in result["states"]:
        for bit, p in ((0, 1.0 - probs[s]), (1, probs[s])):
            _edge(ax, s, s[1:] + str(bit), float(p), FancyArrowPatch)
    ax.set_title(f"babyGPT after {result['steps']} steps on {result['seq']}: P(next token) on each transition\n"
                 "state abc -> bc0 / bc1; edge width follows probability; grey states never occur in the training data", fontsize=11)
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _edge(ax, a: str, b: str, p: float, FancyArrowPatch) -> None:
    (x1, y1), (x2, y2) = POSITIONS[a], POSITIONS[b]
    style = dict(arrowstyle="-|>", mutation_scale=10 + 14 * p, lw=0.6 + 5.5 * p, color="#c0392b" if p >= 0.5 else "#2c3e50",
                 alpha=0.35 + 0.65 * p, zorder=2, shrinkA=0, shrinkB=0)
    if a == b:  # self-loop, drawn on the outer side of the end state
        out = -1.0 if x1 < 4 else 1.0
        t1, t2 = math.radians(35), math.radians(-35)
        start = (x1 + out * NODE_R * math.cos(t1), y1 + NODE_R * math.sin(t1))
        end = (x1 + out * NODE_R * math.cos(t2), y1 + NODE_R * math.sin(t2))
        ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={-2.2 * out}", **style))
        ax.text(x1 + out * (NODE_R + 0.95), y1, f"{p:.2f}", ha="center", va="center", fontsize=11, zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
        return
    # arc3 bends to the right of the direction of travel, so a -> b and b -> a take opposite
    # sides; such a pair (010 <-> 101) also leaves and enters the circles 30 degrees off centre.
    mutual = a in (b[1:] + "0", b[1:] + "1")
    theta, off = math.atan2(y2 - y1, x2 - x1), math.radians(30 if mutual else 0)
    start = (x1 + NODE_R * math.cos(theta - off), y1 + NODE_R * math.sin(theta - off))
    end = (x2 + NODE_R * math.cos(theta + math.pi + off), y2 + NODE_R * math.sin(theta + math.pi + off))
    rad = 0.18
    ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={rad}", **style))
    # the curve's midpoint is the chord midpoint moved by rad/2 of the chord, perpendicular to it
    cx, cy = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    ex, ey = end[0] - start[0], end[1] - start[1]
    ax.text(cx + 0.5 * rad * ey, cy - 0.5 * rad * ex, f"{p:.2f}", ha="center", va="center", fontsize=10, zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))


def main(steps: int = STEPS, seed: int = 1337, out: str = "babygpt.png", threads: int | None = 1) -> dict:
    if not isinstance(steps, int) or steps < 0:
        raise GPT2KitError(f"steps must be an integer >= 0, got {steps!r}")
    if threads:
        torch.set_num_threads(threads)  # 7k parameters: syncing threads costs more than they add
    print(f"babyGPT: vocab {{0,1}}, context {CONTEXT}, trained on {SEQUENCE} ({len(SEQUENCE) - CONTEXT} windows) for {steps} steps, seed {seed}")
    result = run(steps, seed)
    if result["losses"]:
        print(f"loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}  (the floor is {_floor():.4f}: 111 is followed by 0 and 1 equally)")
    print(table(result))
    draw_graph(result, out)
    print(f"wrote {out}")
    return result


def _floor() -> float:
    """The least possible loss on the training windows: the entropy of the data's own transitions."""
    total = len(SEQUENCE) - CONTEXT
    h = 0.0
    for n0, n1 in counts().values():
        for n in (n0, n1):
            if n:
                h -= n / total * math.log(n / (n0 + n1))
    return h
