"""The training state of a sharded (FSDP) run, in torch.distributed.checkpoint (DCP) format.

Each rank writes its own shards (__R_0.distcp) and rank 0 writes the index (.metadata); a run saved
on N processes loads on M: DCP re-slices every tensor to the loading ranks' shards.

Only tensors are saved (weights, AdamW's exp_avg/exp_avg_sq/step): the optimizer's hyperparameters
come from the config, so DCP never stores a pickled object. Its .metadata file is itself a pickle
(torch writes it with pickle.dump and reads it with pickle.load); gpt2kit reads it with an unpickler
that admits only DCP's own metadata classes, and refuses any non-tensor entry, so loading a state
cannot run code. `gpt2kit generate` never reads DCP: it loads the gathered safetensors checkpoint.
"""
from __future__ import annotations

import io
import os
import pickle
import warnings

import torch

from .errors import GPT2KitError

# The globals a DCP .metadata of tensors refers to (torch 2.4-2.13); anything else is refused.
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "ChunkStorageMetadata", "StorageMeta",
                                               "TensorProperties", "TensorStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name in _METADATA_CLASSES.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index of tensors")


def _reader(path: str):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(os.path.join(path, ".metadata"), "rb") as f:
                try:
                    metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
                except Exception as e:
                    raise GPT2KitError(f"{path}/.metadata is not a DCP index of tensors ({e}); the state is corrupt "
                                       "or was not written by gpt2kit") from None
            if getattr(metadata, "storage_meta", None) is None:  # written by an older torch
                from torch.distributed.checkpoint.metadata import StorageMeta

                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):  # a pickled object: never unpickled
            raise GPT2KitError(f"{read_item.dest_index.fqn} in the saved state is not a tensor; the state was not written by gpt2kit")

    return TensorsOnly()


def _tensor_state(model, optimizer, with_optim: bool) -> tuple[dict, list | None]:
    """{"model": ..., "optim": ...} of this rank's shards (DTensors), and the optimizer's param groups.

    Before the first step AdamW has no state; with_optim=False leaves it so, because torch's
    get_optimizer_state_dict would create it by a zero step that counts (Adam's step becomes 1)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if not with_optim:
        return state, None
    osd = get_optimizer_state_dict(model, optimizer)
    return {**state, "optim": osd["state"]}, osd["param_groups"]


def save_sharded(path: str, model, optimizer) -> None:
    """Every rank calls this; it returns when all shards and the index are written."""
    import torch.distributed.checkpoint as dcp

    state, _ = _tensor_state(model, optimizer, with_optim=bool(optimizer.state))
    dcp.save(state, storage_writer=dcp.FileSystemWriter(path, sync_files=True))


def load_sharded(path: str, model, optimizer) -> None:
    """Load a state saved by save_sharded on any number of ranks into this run's model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise GPT2KitError(f"{path} has no .metadata; the state is incomplete and cannot be resumed")
    reader = _reader(path)
    saved_optim = any(k.startswith("optim.") for k in reader.read_metadata().state_dict_metadata)
    state, groups = _tensor_state(model, optimizer, with_optim=saved_optim)
    try:
        with warnings.catch_warnings():  # one process reading every rank's shards (a resume without torchrun) is intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            dcp.load(state, storage_reader=reader, planner=_planner())
    except GPT2KitError:
        raise
    except (Exception, CheckpointException) as e:  # a missing shard or key, another model's shapes (a BaseException)
        msg = str(e).strip().splitlines()
        raise GPT2KitError(f"cannot load the sharded state in {path} ({msg[-1] if msg else type(e).__name__}); "
                           "the state is corrupt or from another model") from None
    set_model_state_dict(model, state["model"])
    if saved_optim:
        set_optimizer_state_dict(model, optimizer, {"state": state["optim"], "param_groups": groups})


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (an empty dict on other ranks); every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in sd.items() if k != "lm_head.weight"}  # tied to wte


def shard_optimizer_state(whole: dict, optimizer) -> dict:
    """A whole-model optimizer state dict (a DDP or one-process run's optimizer.pt) with every moment
    sliced like its parameter's shards, for optimizer.load_state_dict of an FSDP run.

    Its entries are numbered in the order of the optimizer's parameters, which sharding keeps."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in whole["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                    if torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()}
    return {**whole, "state": state}
