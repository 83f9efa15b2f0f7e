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
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .config import GPTConfig
from .data import TokenData
from .distributed import Dist, all_agree, from_master, grad_sync, setup_distributed, shard_model, wrap_ddp
from .errors import GPT2KitError
from .fileio import atomic_path, check_writable, read_json, write_failure, write_json_atomic
from .loading import check_device
from .lora import adapter_state, add_lora, load_adapter_state, lora_layers, save_adapter, trainable_params
from .model import GPT
from .shards import INDEX
from .runlog import append_line, drop_torn_tail, read_metrics, truncate_metrics
from .sharded_state import full_state_dict, load_sharded, save_sharded, shard_optimizer_state
from .train_config import TrainConfig, config_from_dict
from .weights import build_model, load_model, save_model


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

def resolve_device(cfg: TrainConfig, dist_: Dist) -> str:
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        check_device(dev)
        if dist_.group:
            dev = f"cuda:{dist_.local_rank}"
        if torch.device(dev).index is not None:  # set_device("cuda") raises on torch 2.11
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
        raise GPT2KitError(f"{cfg.init_from} has a vocabulary of {pre.config.vocab_size} but the data has {n_vocab}; prepare the data with tokenizer=gpt2")
    sd = {k: v.contiguous() for k, v in pre.state_dict().items() if k != "lm_head.weight"}  # row-major for training
    model = build_model(replace(pre.config, dropout=cfg.dropout), sd, source=cfg.init_from)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model.train()


def prepare_builtin(name: str, cfg: TrainConfig) -> str:
    """Built-in corpora, prepared once into out/data."""
    from . import corpora

    return corpora.prepared(name, os.path.join(cfg.out, "data"), tokenizer=cfg.tokenizer, progress=cfg.progress)


# -- the state of a run ----------------------------------------------------------------

@dataclass
class SavedState:
    """The latest complete state of a run: state.json, the RNGs, and the weights and optimizer, either
    whole (model, optimizer: a DDP or one-process run) or as a DCP directory (sharded: an FSDP run)."""
    meta: dict
    rng: dict
    model: dict[str, torch.Tensor] | None = None
    optimizer: dict | None = None
    sharded: str | None = None


def save_state(out: str, model: GPT, optimizer, scaler, it: int, extra: dict, dist_: Dist | None = None) -> None:
    """state/step-N/{model.safetensors, optimizer.pt, state.json}, then state/LATEST -> step-N.

    Under FSDP every rank calls it and the weights and optimizer go to step-N/dcp/ (sharded_state.py)
    with the RNG in rng.safetensors; rank 0 writes the rest."""
    dist_ = dist_ or Dist()
    root = os.path.join(out, "state")
    step_dir = os.path.join(root, f"step-{it:08d}")
    if dist_.fsdp:
        _save_sharded_state(step_dir, model, optimizer, dist_)
    else:
        _save_full_state(step_dir, model, optimizer, scaler)
    if dist_.master:
        _commit_state(root, step_dir, it, extra)


def _rng_state() -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _save_full_state(step_dir: str, model: GPT, optimizer, scaler) -> None:
    from safetensors.torch import save_file

    os.makedirs(step_dir, exist_ok=True)
    if lora_layers(model):  # a LoRA run: the frozen base is init_from's, only the adapter changes
        sd = adapter_state(model)
    else:
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with atomic_path(os.path.join(step_dir, "model.safetensors")) as tmp:
        save_file(sd, tmp)
    with atomic_path(os.path.join(step_dir, "optimizer.pt")) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state()}, tmp)


def _save_sharded_state(step_dir: str, model: GPT, optimizer, dist_: Dist) -> None:
    from safetensors.torch import save_file

    dcp_dir = os.path.join(step_dir, "dcp")
    if dist_.master:
        shutil.rmtree(dcp_dir, ignore_errors=True)  # a save of this iteration killed half-way
        os.makedirs(step_dir, exist_ok=True)
    torch.distributed.barrier()
    save_sharded(dcp_dir, model, optimizer)
    if dist_.master:
        rng = _rng_state()
        flat = {"torch": rng["torch"], **{f"cuda.{i}": t for i, t in enumerate(rng.get("cuda", []))}}
        with atomic_path(os.path.join(step_dir, "rng.safetensors")) as tmp:
            save_file(flat, tmp)


def _commit_state(root: str, step_dir: str, it: int, extra: dict) -> None:
    """state.json, then LATEST -> step_dir (the state is complete from here on), then older states go."""
    py_state = random.getstate()
    write_json_atomic(os.path.join(step_dir, "state.json"), {
        "iter": it, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": _np_state_to_json(np.random.get_state()), **extra,
    })
    write_json_atomic(os.path.join(root, "LATEST"), {"iter": it, "dir": os.path.basename(step_dir)})
    for name in os.listdir(root):  # older states are now redundant
        if name.startswith("step-") and name != os.path.basename(step_dir):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_state(out: str) -> SavedState:
    """The latest complete state of the run in out."""
    from .weights import read_safetensors

    latest = os.path.join(out, "state", "LATEST")
    if not os.path.exists(latest):
        raise GPT2KitError(f"nothing to resume in {out}: no state/LATEST (was it trained with gpt2kit train --out {out}?)")
    pointer = read_json(latest, "resume pointer")
    if not isinstance(pointer, dict) or not re.fullmatch(r"step-\d{8}", str(pointer.get("dir"))):
        raise GPT2KitError(f"{latest} should be {{\"iter\": N, \"dir\": \"step-NNNNNNNN\"}}, got {str(pointer)[:80]}; the state is corrupt")
    step_dir = os.path.join(out, "state", pointer["dir"])
    state = read_json(os.path.join(step_dir, "state.json"), "training state")
    missing = sorted(STATE_KEYS - set(state)) if isinstance(state, dict) else sorted(STATE_KEYS)
    if missing:
        raise GPT2KitError(f"{step_dir}/state.json lacks {', '.join(missing)}; the state is corrupt and cannot be resumed")
    if os.path.isdir(os.path.join(step_dir, "dcp")):
        flat = _read_rng(os.path.join(step_dir, "rng.safetensors"))
        rng = {"torch": flat["torch"], "cuda": [flat[f"cuda.{i}"] for i in range(len(flat) - 1)]}
        return SavedState(state, rng, sharded=os.path.join(step_dir, "dcp"))
    try:
        opt = torch.load(os.path.join(step_dir, "optimizer.pt"), map_location="cpu", weights_only=True)
    except Exception as e:
        raise GPT2KitError(f"cannot read {step_dir}/optimizer.pt ({str(e).splitlines()[0]}); the state is corrupt") from None
    return SavedState(state, opt["rng"], read_safetensors(os.path.join(step_dir, "model.safetensors")), opt)


def _read_rng(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:  # missing, truncated
        raise GPT2KitError(f"cannot read {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); the state is corrupt") from None


STATE_KEYS = {"iter", "python_rng", "numpy_rng", "best_val_loss", "elapsed_s"}


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


class Trainer:
    """One training run: setup (or restore), then step / evaluate-and-save until max_iters, then close.

    `run()` does all of it and always closes the log file, TensorBoard writer and DDP process group.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, log=print):
        self.cfg, self.resuming, self.log = cfg, resume, log
        self.dist = Dist()
        self.logf = self.writer = self.bar = None
        self.it, self.best_val, self.t_start = 0, float("inf"), 0.0
        self.saved_it = -1  # the iteration of the state on disk
        self.last = {"train": float("nan"), "val": float("nan")}
        self.train_losses: list[tuple[int, float]] = []
        self._eval_batches: list | None = None

    def run(self) -> TrainResult:
        try:
            self.setup()
            with _StopFlag() as stop:
                self.loop(stop)
            return self.finish(stopped=stop.set)
        except Exception as e:
            why = write_failure(e)  # a full, read-only or forbidden disk (safetensors wraps ENOSPC in its own error)
            if why is None:
                raise
            raise GPT2KitError(f"cannot write the run to {self.cfg.out}: {why}; choose another out or free space") from None
        finally:
            self.close()

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        _check_out_is_dir(cfg.out)
        self.dist = setup_distributed(cfg.device, cfg.strategy)
        self.device = resolve_device(cfg, self.dist)
        self.dtype = resolve_dtype(cfg, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.grad_accum % self.dist.world:
            raise GPT2KitError(f"grad_accum ({cfg.grad_accum}) must be divisible by the number of processes ({self.dist.world})")
        self.local_accum = cfg.grad_accum // self.dist.world
        self.data = self.load_data()
        self.tokenizer = self.data.tokenizer()
        state = load_state(cfg.out) if self.resuming else None
        if state is not None and state.meta["iter"] >= cfg.max_iters:
            raise GPT2KitError(f"{cfg.out} is already done: it reached iter {state.meta['iter']} of max_iters={cfg.max_iters}; "
                               "resume with a larger max_iters to train further")
        self.raw_model = self.build_model(state)
        _check_disk(cfg.out, self.raw_model.num_params(non_embedding=False), self.dist)
        if self.dist.fsdp:  # in place, before the optimizer: it steps the shards
            shard_model(self.raw_model, self.device, self.dtype)
        self.optimizer = configure_optimizer(self.raw_model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.split(":")[0], enabled=(self.dtype == torch.float16))
        if state is not None:
            self.restore(state)
        else:
            self.seed()
        self.model = self.wrap(self.raw_model)
        self.tokens_per_iter = cfg.grad_accum * cfg.batch_size * self.raw_model.config.block_size
        if self.dist.master:
            self.open_logs(torn_ok=state is not None)

    def load_data(self):
        if self.cfg.sft:  # a JSONL file of conversations, loss on the assistant's tokens (gpt2kit.sft)
            from .sft import SFTData, sft_tokenizer

            return SFTData(self.cfg.data, sft_tokenizer(self.cfg.data, self.cfg.tokenizer, self.cfg.init_from))
        return TokenData(self.load_data_dir())

    def load_data_dir(self) -> str:
        cfg = self.cfg
        if os.path.isdir(cfg.data) or os.path.basename(cfg.data) == INDEX:  # a data dir, or its index file
            return cfg.data
        if not cfg.data:
            raise GPT2KitError("no training data: pass data=DIR (from `gpt2kit prepare`) or a built-in corpus (python-stdlib, shakespeare)")
        if os.path.exists(cfg.data):
            raise GPT2KitError(f"{cfg.data} is a file; prepare it first: gpt2kit prepare {cfg.data} --tokenizer char --out data/mine, then data=data/mine")
        data_dir = prepare_builtin(cfg.data, cfg) if self.dist.master else os.path.join(cfg.out, "data")
        if self.dist.ddp:
            torch.distributed.barrier()
        return data_dir

    def build_model(self, state: SavedState | None) -> GPT:
        cfg, spec = self.cfg, self.cfg.lora_spec()
        if state is None or spec is not None:  # a LoRA run re-reads its frozen base; its state holds the adapter
            if state is None:
                _check_memory(cfg, self.data.n_vocab)
            model = init_model(cfg, self.data.n_vocab)
        else:
            config = _saved_model_config(cfg.out)  # a sharded state's weights load after sharding (restore)
            model = GPT(config) if state.model is None else build_model(config, state.model)
            if model.config.vocab_size != self.data.n_vocab:
                raise GPT2KitError(f"the run in {cfg.out} has a vocabulary of {model.config.vocab_size} but {cfg.data} has {self.data.n_vocab}; resume with its own data")
        if spec is not None:
            add_lora(model, spec, seed=cfg.seed)
            if state is not None:
                load_adapter_state(model, state.model, os.path.join(cfg.out, "state"))
        set_dropout(model, cfg.dropout)
        self.data.check_block_size(model.config.block_size)
        return model.to(self.device).train()

    def seed(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed + self.dist.rank)  # dropout masks differ per rank

    def restore(self, state: SavedState) -> None:
        """Optimizer, scaler, RNGs and counters of the saved state: the run continues bit-identically."""
        meta = state.meta
        if state.sharded:  # weights too: re-sliced to this run's ranks
            load_sharded(state.sharded, self.raw_model, self.optimizer)
        else:
            opt = state.optimizer["optimizer"]  # a DDP run's whole moments: sliced when this run shards
            self.optimizer.load_state_dict(shard_optimizer_state(opt, self.optimizer) if self.dist.fsdp else opt)
            self.scaler.load_state_dict(state.optimizer["scaler"])
        torch.set_rng_state(state.rng["torch"])
        if state.rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.rng["cuda"])
        random.setstate((meta["python_rng"][0], tuple(meta["python_rng"][1]), meta["python_rng"][2]))
        np.random.set_state(_np_state_from_json(meta["numpy_rng"]))
        self.it, self.best_val = meta["iter"], meta["best_val_loss"]
        self.saved_it = self.it
        self.t_start = -meta["elapsed_s"]  # made absolute when the loop starts

    def wrap(self, model: GPT):
        if self.cfg.compile:
            model = torch.compile(model)
        if self.dist.ddp and not self.dist.fsdp:
            model = wrap_ddp(model, self.dist, self.device)
        return model

    def open_logs(self, torn_ok: bool) -> None:
        cfg, out = self.cfg, self.cfg.out
        os.makedirs(os.path.join(out, "state"), exist_ok=True)
        write_json_atomic(os.path.join(out, "train_config.json"), cfg.to_dict())
        write_json_atomic(os.path.join(out, "state", "model_config.json"), self.raw_model.config.to_dict())
        torn = [drop_torn_tail(os.path.join(out, "train.log")),
                truncate_metrics(os.path.join(out, "metrics.jsonl"), self.it if torn_ok else -1)]
        for name, was_torn in zip(("train.log", "metrics.jsonl"), torn):
            if was_torn and torn_ok:
                self.log(f"note: dropped the torn last line of {os.path.join(out, name)} (the previous run was killed mid-write)")
        self.writer = _tensorboard(cfg)
        self.logf = open(os.path.join(out, "train.log"), "a", encoding="utf-8")
        if not self.resuming:
            procs = f" | {self.dist.strategy.upper()} x{self.dist.world}" if self.dist.group else ""
            self.log(f"model: {self.raw_model.num_params() / 1e6:.2f}M parameters | {self.tokens_per_iter} tokens/iter | "
                     f"device {self.device} {str(self.dtype).replace('torch.', '')}{procs}")
            if cfg.lora_rank:
                n, total = trainable_params(self.raw_model), self.raw_model.num_params(non_embedding=False)
                self.log(f"LoRA r={cfg.lora_rank} on {cfg.lora_targets}: trainable params {n:,} of {total:,} ({100 * n / total:.4f}%)")

    # -- the loop --------------------------------------------------------------------------------

    def loop(self, stop: _StopFlag) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        self.bar = tqdm(total=cfg.max_iters, initial=self.it, disable=not (cfg.progress and self.dist.master), unit="it", dynamic_ncols=True)
        self.t_start += time.perf_counter()
        skip_eval = self.resuming  # the state was saved right after this iteration's eval
        while True:
            lr = lr_at(self.it, cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            if (self.it % cfg.eval_interval == 0 or self.it == cfg.max_iters) and not skip_eval and self.saves:
                self.evaluate_and_save(lr)
            skip_eval = False
            stop.set = all_agree(stop.set, self.dist)  # every rank stops after the same step
            if self.it >= cfg.max_iters or stop.set:
                break
            self.step(lr)

    def step(self, lr: float) -> None:
        """One optimizer step over grad_accum micro-batches; the loss is read back every log_interval only."""
        cfg, dist_, T = self.cfg, self.dist, self.raw_model.config.block_size
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.local_accum):
            m = micro * dist_.world + dist_.rank  # this rank's share of the global micro-steps
            x, y = self.data.batch("train", cfg.batch_size, T, (cfg.seed, self.it, m))
            x, y = torch.from_numpy(x).to(self.device, non_blocking=True), torch.from_numpy(y).to(self.device, non_blocking=True)
            with grad_sync(self.model, self.raw_model, dist_, last=micro == self.local_accum - 1):
                with autocast(self.device, self.dtype):
                    _, loss = self.model(x, y)
                    loss = loss / self.local_accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when fp16 grads overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.it += 1
        if self.it % cfg.log_interval == 0 or self.it == cfg.max_iters:
            self.log_step(loss_sum, lr)
        self.bar.update(1)

    def log_step(self, loss_sum: torch.Tensor, lr: float) -> None:
        if self.dist.ddp:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        if not self.dist.master:
            return
        lossf = loss_sum.item()
        self.train_losses.append((self.it, lossf))
        self.bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}")
        self.logf.write(f"iter {self.it}: loss {lossf:.4f} lr {lr:.3e} elapsed {time.perf_counter() - self.t_start:.1f}s\n")
        if self.writer:
            self.writer.add_scalar("train/loss_iter", lossf, self.it)

    @property
    def saves(self) -> bool:
        """This rank evaluates and saves: rank 0, or every rank of a sharded model (it takes them all)."""
        return self.dist.master or self.dist.fsdp

    def evaluate_and_save(self, lr: float) -> None:
        """Eval both splits, log a metrics record, save the checkpoint if better and the state always."""
        cfg, it = self.cfg, self.it
        self.last = self.estimate_loss()
        if self.dist.fsdp:  # every rank evaluated; rank 0's numbers decide the save for all
            self.last = dict(zip(self.last, from_master(list(self.last.values()), self.dist)))
        elapsed = time.perf_counter() - self.t_start
        improved = self.last["val"] < self.best_val
        self.best_val = min(self.best_val, self.last["val"])
        if self.dist.master:
            self.record_eval(lr, elapsed)
        if improved or cfg.always_save_checkpoint:
            self.save_checkpoint({"iter": it, "val_loss": self.last["val"], "train_config": cfg.to_dict()})
        self.save_state(elapsed)

    def record_eval(self, lr: float, elapsed: float) -> None:
        cfg, it = self.cfg, self.it
        rec = json.dumps({"step": it, "train_loss": self.last["train"], "val_loss": self.last["val"], "lr": lr,
                          "tokens_per_s": it * self.tokens_per_iter / max(elapsed, 1e-9), "elapsed_s": elapsed})
        append_line(os.path.join(cfg.out, "metrics.jsonl"), rec)
        msg = f"step {it}: train loss {self.last['train']:.4f}, val loss {self.last['val']:.4f}"
        self.bar.write(msg) if cfg.progress else self.log(msg)
        self.logf.write(rec + "\n")
        self.logf.flush()
        if self.writer:
            self.writer.add_scalars("loss", {"train": self.last["train"], "val": self.last["val"]}, it)

    def save_checkpoint(self, meta: dict) -> None:
        """The loadable model dir (weights.save_model), or for a LoRA run the adapter in peft's format;
        a sharded model is first gathered on rank 0."""
        model = self.raw_model
        if self.cfg.lora_rank:
            if self.dist.master:
                save_adapter(model, self.cfg.out, self.cfg.lora_spec(), meta=meta)
            return
        if self.dist.fsdp:
            sd = full_state_dict(model)  # every rank takes part
            model = build_model(model.config, sd, source="the gathered model") if self.dist.master else None
        if self.dist.master:
            save_model(model, self.cfg.out, tokenizer=self.tokenizer, meta=meta)

    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over eval_iters fixed batches per split; the batches are drawn once and reused.

        inference_mode is ~5% faster than no_grad on CPU, but FSDP's gathered weights made under it
        would be inference tensors that the next training step cannot overwrite."""
        with torch.no_grad() if self.dist.fsdp else torch.inference_mode():
            return self._estimate_loss()

    def _estimate_loss(self) -> dict[str, float]:
        cfg = self.cfg
        batches = self._eval_batches or [[self.eval_batch(s, k) for k in range(cfg.eval_iters)] for s in (0, 1)]
        if 2 * batches[0][0][0].nbytes * 2 * cfg.eval_iters <= EVAL_CACHE_BYTES:
            self._eval_batches = batches
        model = self.raw_model
        model.eval()
        out = {}
        for split, split_batches in zip(("train", "val"), batches):
            losses = torch.zeros(len(split_batches), dtype=torch.float64, device=self.device)
            for k, (x, y) in enumerate(split_batches):
                with autocast(self.device, self.dtype):
                    losses[k] = model(x, y)[1]
            out[split] = losses.mean().item()  # one device sync per split
        model.train()
        return out

    def eval_batch(self, s: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, T = self.cfg, self.raw_model.config.block_size
        x, y = self.data.batch(("train", "val")[s], cfg.batch_size, T, (cfg.seed, 1 << 30, s, k))
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def save_state(self, elapsed: float) -> None:
        if self.it == self.saved_it:  # a stop right after a resume: the state on disk is this one (not rewritten in place)
            return
        self.saved_it = self.it
        save_state(self.cfg.out, self.raw_model, self.optimizer, self.scaler, self.it,
                   {"best_val_loss": self.best_val, "elapsed_s": elapsed}, self.dist)

    # -- the end ---------------------------------------------------------------------------------

    def finish(self, stopped: bool) -> TrainResult:
        cfg, master = self.cfg, self.dist.master
        self.bar.close()
        elapsed = time.perf_counter() - self.t_start
        if stopped and self.saves and self.it < cfg.max_iters:
            self.save_state(elapsed)
        if stopped and master and self.it < cfg.max_iters:
            self.log(f"stopped at iter {self.it}; state saved. Continue with: gpt2kit train --resume {cfg.out}")
        if master and cfg.plot:
            if importlib.util.find_spec("matplotlib") is None:  # the [plot] extra is optional
                self.log("note: no loss.png: matplotlib is not installed (pip install 'gpt2kit[plot]')")
            else:
                plot_losses(cfg.out, self.train_losses)
        if self.dist.ddp:
            torch.distributed.barrier()
        result = TrainResult(cfg.out, self.it, self.best_val, self.last["train"], self.last["val"], elapsed,
                             self.it * self.tokens_per_iter / max(elapsed, 1e-9), self.train_losses)
        saved = "adapter_config.json" if cfg.lora_rank else "config.json"
        if master and cfg.samples and os.path.exists(os.path.join(cfg.out, saved)):
            print_samples(cfg, self.log)
        return result

    def close(self) -> None:
        """Release what setup opened, also after an error."""
        if self.bar is not None:
            self.bar.close()
        if self.logf is not None:
            self.logf.close()
        if self.writer is not None:
            self.writer.close()
        if self.dist.group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train(cfg: TrainConfig, *, resume: bool = False, log=print) -> TrainResult:
    """Train (or, with resume, continue) a model as configured; returns the final losses and speed."""
    return Trainer(cfg, resume=resume, log=log).run()


# Fields fixed by the model a run has built (or by the run dir itself): a resume cannot change them.
FIXED_ON_RESUME = ("out", "init_from", "tokenizer", "n_layer", "n_head", "n_embd", "block_size", "bias", "pad_vocab_multiple",
                   "lora_rank", "lora_alpha", "lora_targets")


def resume_config(run_dir: str, overrides: dict | None = None) -> TrainConfig:
    """The saved config of run_dir with `overrides` applied; refuses those that cannot take effect."""
    path = os.path.join(run_dir, "train_config.json")
    if not os.path.exists(path):
        raise GPT2KitError(f"nothing to resume in {run_dir}: no train_config.json (is it a gpt2kit run dir?)")
    saved = read_json(path, "train config")
    cfg = config_from_dict({**saved, "out": run_dir} if isinstance(saved, dict) else saved, path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fixed = sorted(k for k in overrides if k in FIXED_ON_RESUME and overrides[k] != getattr(cfg, k))
    if fixed:
        raise GPT2KitError(f"cannot change {', '.join(fixed)} when resuming {run_dir}: the run's model is built with "
                           f"{', '.join(f'{k}={getattr(cfg, k)!r}' for k in fixed)}; start a new run instead")
    return config_from_dict({**cfg.to_dict(), **overrides}, "overrides")


def resume(run_dir: str, *, log=print, **overrides) -> TrainResult:
    """Continue the run in run_dir from its latest state; overrides (lr, max_iters, dropout, ...) take effect."""
    return Trainer(resume_config(run_dir, overrides), resume=True, log=log).run()


def set_dropout(model: GPT, p: float) -> None:
    """Set dropout everywhere it acts: every nn.Dropout, the attention's SDPA dropout_p, and the config."""
    p = float(p)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = p
    model.config.dropout = p


def print_samples(cfg: TrainConfig, log=print) -> None:
    """cfg.samples samples of cfg.sample_tokens tokens from the saved checkpoint (TrainConfig.samples*)."""
    from .generation import generate_text
    from .loading import load
    from .tokenization import load_tokenizer

    if cfg.lora_rank:  # the adapter on its base
        model, tok = load(cfg.init_from, adapter=cfg.out)
    else:
        model, tok = load_model(cfg.out), load_tokenizer(cfg.out)
    prompt = cfg.sample_prompt or ("" if tok.eot_token is not None else "\n")
    ids = tok.encode(prompt) if prompt else [tok.eot_token]
    g = torch.Generator().manual_seed(cfg.seed)
    for i in range(cfg.samples):
        log(f"---------- sample {i + 1} ----------")
        log(prompt + "".join(generate_text(model, tok, ids, cfg.sample_tokens, temperature=0.8, top_k=40, generator=g)))


# -- checks before anything is written ----------------------------------------------------------

EVAL_CACHE_BYTES = 64 << 20  # the fixed eval batches are kept on the device when they fit in this
def _check_out_is_dir(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise GPT2KitError(f"out {out} is an existing file; the run needs a directory (a new one, or a previous run to resume)")


def _check_memory(cfg: TrainConfig, n_vocab: int) -> None:
    """Refuse a model whose weights, gradients and AdamW moments (16 bytes/param) exceed this machine's RAM."""
    d = cfg.n_embd
    params = 12 * cfg.n_layer * d * d + (n_vocab + cfg.pad_vocab_multiple + cfg.block_size) * d
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if cfg.init_from == "scratch" and 16 * params > ram:
        raise GPT2KitError(f"a model of n_layer={cfg.n_layer}, n_embd={d} has about {params / 1e9:.1f}B parameters and needs "
                           f"about {16 * params / 2**30:,.0f} GiB to train, more than this machine's {ram / 2**30:.0f} GiB; "
                           "use a smaller n_embd or n_layer")


def _check_disk(out: str, params: int, dist_: Dist) -> None:
    """The run dir (or the dir it will be made in) must be writable, with room for a checkpoint and a
    state (about 16 bytes/param). Checked before anything is written."""
    if not dist_.master:
        return
    where = check_writable(out)
    need, free = 16 * params + (1 << 20), shutil.disk_usage(where).free
    if free < need:
        raise GPT2KitError(f"out {out} has {free / 2**20:.1f} MiB free but a checkpoint and training state need about "
                           f"{need / 2**20:.1f} MiB; free space or choose another out")


def _saved_model_config(out: str) -> GPTConfig:
    d = read_json(os.path.join(out, "state", "model_config.json"), "model config")
    try:
        return GPTConfig.from_dict(d)
    except GPT2KitError:
        raise
    except (TypeError, ValueError, AttributeError) as e:
        raise GPT2KitError(f"{out}/state/model_config.json is not a valid model config ({e}); the run cannot be resumed") from None


def _tensorboard(cfg: TrainConfig):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GPT2KitError("tensorboard=True needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(cfg.out, "tb"))


def plot_losses(out: str, train_losses: list[tuple[int, float]]) -> str | None:
    """loss.png: per-iteration train loss (this session) and the eval points from metrics.jsonl."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs, _ = read_metrics(path)
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
