"""The processes of a training run and how they split the work: torchrun's process group, then
DDP (every rank holds the whole model) or FSDP2 (`fully_shard`: every rank holds 1/world of the
weights, gradients and AdamW moments, gathered one Block at a time).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch

from .errors import GPT2KitError

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    group: bool = False  # this process is in a torchrun process group (also a 1-process FSDP run)
    cpu_group: object = None  # gloo, for small host-side agreements that must not wait on the GPU (None: the default)

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        """More than one process (DDP or FSDP): gradients, losses and barriers are collective."""
        return self.world > 1

    @property
    def fsdp(self) -> bool:
        """The model is sharded: forward, eval and every save run on all ranks together."""
        return self.strategy == "fsdp" and self.group


def setup_distributed(device: str, strategy: str = "ddp") -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA).

    DDP with one process runs without a group; FSDP always needs one, so it refuses to run outside torchrun.
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if strategy == "fsdp" and not launched:
        raise GPT2KitError("strategy='fsdp' shards the model over processes started by torchrun; launch with "
                           "torchrun --nproc_per_node=N -m gpt2kit train ..., or use strategy='ddp' for one process")
    if not launched or (int(os.environ["WORLD_SIZE"]) == 1 and strategy != "fsdp"):
        return Dist(strategy=strategy)
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), strategy, True)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())  # as resolve_device decides
    if not dist.is_initialized():
        if cuda:  # NCCL binds the current device; otherwise it guesses one from the global rank
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if dist.get_backend() != "gloo":
        d.cpu_group = dist.new_group(backend="gloo")
    return d


def shard_model(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """FSDP2 in place: each Block is one all-gather unit, the root holds the rest.

    wte and lm_head are one Parameter (GPT-2's tie); both live in the root unit, so the tie survives
    sharding. On CUDA with dtype bf16 the gathered weights are bf16 and gradients are reduced in fp32; on CPU
    everything stays fp32 (gloo, and autocast as with DDP).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kind = device.split(":")[0]
    mesh = init_device_mesh(kind, (torch.distributed.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if kind == "cuda" and dtype != torch.float32 \
        else MixedPrecisionPolicy()
    # The root returns the logits sliced to vocab_size, a view; nothing writes to it in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def wrap_ddp(model: torch.nn.Module, dist_: Dist, device: str) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[dist_.local_rank] if device.startswith("cuda") else None)


def grad_sync(model: torch.nn.Module, sharded: torch.nn.Module, dist_: Dist, last: bool):
    """Reduce gradients on the last micro-step only: DDP's no_sync, FSDP's requires_gradient_sync."""
    if dist_.fsdp:
        sharded.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if not dist_.ddp or last else model.no_sync()


def from_master(values: list[float], dist_: Dist) -> list[float]:
    """Rank 0's values on every rank, so that decisions taken on all ranks (save or not) agree."""
    if not dist_.ddp:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.broadcast(t, src=0, group=dist_.cpu_group)
    return t.tolist()


def all_agree(flag: bool, dist_: Dist) -> bool:
    """True on every rank when it is True on any (a Ctrl-C seen by one rank stops all at the same step)."""
    if not dist_.ddp:
        return flag
    t = torch.tensor([int(flag)])  # on the host: a GPU tensor here would sync the GPU every step
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=dist_.cpu_group)
    return bool(t.item())
