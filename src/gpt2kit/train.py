"""The training loop, as importable functions (nanoGPT's train.py, with exact resume).

Run dir layout (out/):
    config.json, model.safetensors, tokenizer/   the checkpoint, loadable by `gpt2kit generate --model out`
                                                 (best val loss, or latest with always_save_checkpoint)
    state/LATEST, state/step-NNNNNNNN/          training state: weights, optimizer, RNG, iteration
    train_config.json, metrics.jsonl, train.log, loss.png

Every file is written atomically, and state/LATEST is replaced only after its step dir is
complete, so kill -9 at any moment leaves the last good checkpoint and state loadable.
Batches come from a counter-based RNG keyed by (seed, iter, micro-step), so a resumed run
is bit-identical to an uninterrupted one on CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .config import GPTConfig
from .data import TokenData
from .errors import GPT2KitError
from .fileio import atomic_path, read_json, write_json_atomic
from .model import GPT
from .train_config import TrainConfig
from .weights import build_model, load_model, save_model


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


@dataclass
class TrainResult:
    out: str
    iters: int
    best_val_loss: float
    final_train_loss: float
    final_val_loss: float
    elapsed_s: float
    tokens_per_s: float
    train_losses: list[tuple[int, float]]  # (iter, loss) every log_interval iters of this session


# -- set-up --------------------------------------------------------------------------------------

def setup_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return d


def resolve_device(cfg: TrainConfig, dist_: Dist) -> str:
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GPT2KitError("--device cuda was asked for but CUDA is not available; use --device cpu")
        if dist_.ddp:
            dev = f"cuda:{dist_.local_rank}"
        torch.cuda.set_device(dev)
    return dev


def resolve_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    if cfg.dtype == "auto":
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (nanoGPT's schedule)."""
    if not cfg.decay_lr:
        return cfg.lr
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def configure_optimizer(model: GPT, cfg: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only; fused kernels where available."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.split(":")[0] in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kw)


def init_model(cfg: TrainConfig, n_vocab: int) -> GPT:
    if cfg.init_from == "scratch":
        torch.manual_seed(cfg.seed)
        return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=n_vocab, n_layer=cfg.n_layer, n_head=cfg.n_head,
                             n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, pad_vocab_multiple=cfg.pad_vocab_multiple))
    pre = load_model(cfg.init_from)
    if pre.config.vocab_size != n_vocab:
        raise GPT2KitError(f"{cfg.init_from} has a vocabulary of {pre.config.vocab_size} but the data has {n_vocab}; prepare the data with --tokenizer gpt2")
    sd = {k: v.contiguous() for k, v in pre.state_dict().items() if k != "lm_head.weight"}  # row-major for training
    model = build_model(replace(pre.config, dropout=cfg.dropout), sd, source=cfg.init_from)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model.train()


def prepare_builtin(name: str, cfg: TrainConfig) -> str:
    """Built-in corpora, prepared once into out/data."""
    from . import corpora

    return corpora.prepared(name, os.path.join(cfg.out, "data"), tokenizer=cfg.tokenizer, progress=cfg.progress)


# -- evaluation and checkpoints ----------------------------------------------------------------

@torch.no_grad()
def estimate_loss(model: GPT, data: TokenData, cfg: TrainConfig, device: str, dtype) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches per split (the same batches at every eval)."""
    was_training = model.training
    model.eval()
    out = {}
    for s, split in enumerate(("train", "val")):
        losses = []
        for k in range(cfg.eval_iters):
            x, y = data.batch(split, cfg.batch_size, model.config.block_size, (cfg.seed, 1 << 30, s, k))
            with autocast(device, dtype):
                _, loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
            losses.append(loss.item())
        out[split] = float(np.mean(losses))
    model.train(was_training)
    return out


def save_state(out: str, model: GPT, optimizer, scaler, it: int, extra: dict) -> None:
    """state/step-N/{model.safetensors, optimizer.pt, state.json}, then state/LATEST -> step-N."""
    from safetensors.torch import save_file

    root = os.path.join(out, "state")
    step_dir = os.path.join(root, f"step-{it:08d}")
    os.makedirs(step_dir, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with atomic_path(os.path.join(step_dir, "model.safetensors")) as tmp:
        save_file(sd, tmp)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_path(os.path.join(step_dir, "optimizer.pt")) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng}, tmp)
    py_state = random.getstate()
    write_json_atomic(os.path.join(step_dir, "state.json"), {
        "iter": it, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": _np_state_to_json(np.random.get_state()), **extra,
    })
    write_json_atomic(os.path.join(root, "LATEST"), {"iter": it, "dir": os.path.basename(step_dir)})
    for name in os.listdir(root):  # older states are now redundant
        if name.startswith("step-") and name != os.path.basename(step_dir):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_state(out: str) -> tuple[dict, dict, dict]:
    """(state.json, optimizer.pt contents, model state dict) of the latest complete state."""
    from .weights import read_safetensors

    latest = os.path.join(out, "state", "LATEST")
    if not os.path.exists(latest):
        raise GPT2KitError(f"nothing to resume in {out}: no state/LATEST (was it trained with gpt2kit train --out {out}?)")
    step_dir = os.path.join(out, "state", read_json(latest, "resume pointer")["dir"])
    state = read_json(os.path.join(step_dir, "state.json"), "training state")
    try:
        opt = torch.load(os.path.join(step_dir, "optimizer.pt"), map_location="cpu", weights_only=True)
    except Exception as e:
        raise GPT2KitError(f"cannot read {step_dir}/optimizer.pt ({str(e).splitlines()[0]}); the state is corrupt") from None
    return state, opt, read_safetensors(os.path.join(step_dir, "model.safetensors"))


def _np_state_to_json(s):
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _np_state_from_json(s):
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])


# -- the loop --------------------------------------------------------------------------------------

class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and exits at the next iteration boundary."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.set:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def train(cfg: TrainConfig, *, resume: bool = False, log=print) -> TrainResult:
    """Train (or resume) a model as configured; returns the final losses and speed."""
    dist_ = setup_distributed(cfg.device)
    device = resolve_device(cfg, dist_)
    dtype = resolve_dtype(cfg, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.grad_accum % dist_.world:
        raise GPT2KitError(f"grad_accum ({cfg.grad_accum}) must be divisible by the number of processes ({dist_.world})")
    local_accum = cfg.grad_accum // dist_.world

    data_dir = cfg.data if os.path.isdir(cfg.data) else None
    if data_dir is None:
        if not cfg.data:
            raise GPT2KitError("no training data: pass --data DIR (from `gpt2kit prepare`) or a built-in corpus (python-stdlib, shakespeare)")
        if os.path.exists(cfg.data):
            raise GPT2KitError(f"{cfg.data} is a file; prepare it first: gpt2kit prepare {cfg.data} --tokenizer char --out data/mine, then --data data/mine")
        data_dir = prepare_builtin(cfg.data, cfg) if dist_.master else os.path.join(cfg.out, "data")
        if dist_.ddp:
            torch.distributed.barrier()
    data = TokenData(data_dir)
    tokenizer = data.tokenizer()

    state = None
    if resume:
        state, opt_state, model_sd = load_state(cfg.out)
    model = init_model(cfg, data.n_vocab) if state is None else build_model(
        GPTConfig.from_dict(read_json(os.path.join(cfg.out, "state", "model_config.json"), "model config")), model_sd)
    model.config.dropout = cfg.dropout
    data.check_block_size(model.config.block_size)
    model.to(device).train()
    optimizer = configure_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == torch.float16))
    it, best_val, elapsed_before = 0, float("inf"), 0.0
    if state is not None:
        optimizer.load_state_dict(opt_state["optimizer"])
        scaler.load_state_dict(opt_state["scaler"])
        torch.set_rng_state(opt_state["rng"]["torch"])
        if "cuda" in opt_state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(opt_state["rng"]["cuda"])
        random.setstate((state["python_rng"][0], tuple(state["python_rng"][1]), state["python_rng"][2]))
        np.random.set_state(_np_state_from_json(state["numpy_rng"]))
        it, best_val, elapsed_before = state["iter"], state["best_val_loss"], state["elapsed_s"]
    else:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed + dist_.rank)  # dropout masks differ per rank

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist_.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dist_.local_rank] if device.startswith("cuda") else None)

    if dist_.master:
        os.makedirs(os.path.join(cfg.out, "state"), exist_ok=True)
        write_json_atomic(os.path.join(cfg.out, "train_config.json"), cfg.to_dict())
        write_json_atomic(os.path.join(cfg.out, "state", "model_config.json"), raw_model.config.to_dict())
        _truncate_metrics(cfg.out, it if state is not None else -1)
    writer = _tensorboard(cfg) if dist_.master else None
    logf = open(os.path.join(cfg.out, "train.log"), "a", encoding="utf-8") if dist_.master else None
    tokens_per_iter = cfg.grad_accum * cfg.batch_size * raw_model.config.block_size
    if dist_.master and state is None:
        n = raw_model.num_params()
        log(f"model: {n / 1e6:.2f}M parameters | {tokens_per_iter} tokens/iter | device {device} {str(dtype).replace('torch.', '')}"
            + (f" | DDP x{dist_.world}" if dist_.ddp else ""))

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_iters, initial=it, disable=not (cfg.progress and dist_.master), unit="it", dynamic_ncols=True)
    t_start = time.perf_counter() - elapsed_before
    last = {"train": float("nan"), "val": float("nan")}
    train_losses: list[tuple[int, float]] = []
    skip_eval = state is not None  # the state was saved right after this iteration's eval
    T = raw_model.config.block_size
    with _StopFlag() as stop:
        while True:
            lr = lr_at(it, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and not skip_eval:
                if dist_.master:
                    last = estimate_loss(raw_model, data, cfg, device, dtype)
                    elapsed = time.perf_counter() - t_start
                    improved = last["val"] < best_val
                    best_val = min(best_val, last["val"])
                    rec = {"step": it, "train_loss": last["train"], "val_loss": last["val"], "lr": lr,
                           "tokens_per_s": it * tokens_per_iter / max(elapsed, 1e-9), "elapsed_s": elapsed}
                    _append_metrics(cfg.out, rec)
                    msg = f"step {it}: train loss {last['train']:.4f}, val loss {last['val']:.4f}"
                    bar.write(msg) if cfg.progress else log(msg)
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    if writer:
                        writer.add_scalars("loss", {"train": last["train"], "val": last["val"]}, it)
                    if improved or cfg.always_save_checkpoint:
                        save_model(raw_model, cfg.out, tokenizer=tokenizer, meta={"iter": it, "val_loss": last["val"], "train_config": cfg.to_dict()})
                    save_state(cfg.out, raw_model, optimizer, scaler, it,
                               {"best_val_loss": best_val, "elapsed_s": elapsed})
            skip_eval = False
            if it >= cfg.max_iters or stop.set:
                break

            loss_sum = torch.zeros((), device=device)
            for micro in range(local_accum):
                m = micro * dist_.world + dist_.rank  # this rank's share of the global micro-steps
                x, y = data.batch("train", cfg.batch_size, T, (cfg.seed, it, m))
                x, y = torch.from_numpy(x).to(device, non_blocking=True), torch.from_numpy(y).to(device, non_blocking=True)
                sync = contextlib.nullcontext() if not dist_.ddp or micro == local_accum - 1 else model.no_sync()
                with sync:
                    with autocast(device, dtype):
                        _, loss = model(x, y)
                        loss = loss / local_accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)  # skipped when fp16 grads overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            it += 1
            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                if dist_.ddp:
                    torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
                if dist_.master:
                    lossf = loss_sum.item()
                    train_losses.append((it, lossf))
                    bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}")
                    logf.write(f"iter {it}: loss {lossf:.4f} lr {lr:.3e} elapsed {time.perf_counter() - t_start:.1f}s\n")
                    if writer:
                        writer.add_scalar("train/loss_iter", lossf, it)
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t_start
    if stop.set and dist_.master and it < cfg.max_iters:
        save_state(cfg.out, raw_model, optimizer, scaler, it, {"best_val_loss": best_val, "elapsed_s": elapsed})
        log(f"stopped at iter {it}; state saved. Continue with: gpt2kit train --resume {cfg.out}")
    if logf:
        logf.close()
    if writer:
        writer.close()
    if dist_.master and cfg.plot:
        plot_losses(cfg.out, train_losses)
    result = TrainResult(cfg.out, it, best_val, last["train"], last["val"], elapsed,
                         it * tokens_per_iter / max(elapsed, 1e-9), train_losses)
    if dist_.ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _append_metrics(out: str, rec: dict) -> None:
    with open(os.path.join(out, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def _truncate_metrics(out: str, upto: int) -> None:
    """On resume, drop metric lines past the resumed step (a killed run may have logged them)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return
    keep = [line for line in open(path, encoding="utf-8") if line.strip() and json.loads(line)["step"] <= upto]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)


def _tensorboard(cfg: TrainConfig):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GPT2KitError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(cfg.out, "tb"))


def plot_losses(out: str, train_losses: list[tuple[int, float]]) -> str | None:
    """loss.png: per-iteration train loss (this session) and the eval points from metrics.jsonl."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train_losses:
        ax.plot(*zip(*train_losses), color="0.75", lw=0.8, label="train (per iter)")
    ax.plot([r["step"] for r in recs], [r["train_loss"] for r in recs], "o-", label="train (eval)")
    ax.plot([r["step"] for r in recs], [r["val_loss"] for r in recs], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = os.path.join(out, "loss.png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png
