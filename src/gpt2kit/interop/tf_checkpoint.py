"""OpenAI's TensorFlow GPT-2 checkpoints, read with numpy alone (no TensorFlow).

A TF v2 checkpoint is `PREFIX.index` plus `PREFIX.data-0000N-of-0000M` shards:

  .index   an SSTable (LevelDB's table format): data blocks of prefix-compressed
           key/value entries, an index block pointing at them, and a 48-byte footer.
           Key "" holds a BundleHeaderProto; every other key is a variable name whose
           value is a BundleEntryProto (dtype, shape, shard_id, offset, size, crc32c).
  .data-*  the raw little-endian tensor bytes, located by (shard_id, offset, size).

Both protobufs are decoded here by hand from the wire format, so there is no dependency
on tensorflow or protobuf. Every block and tensor is checked against its crc32c.
OpenAI's variables (model/h0/attn/c_attn/w, ...) are then mapped onto gpt2kit's names;
their conv1d weights are [1, nx, nf] and become nn.Linear's (nf, nx).
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..config import GPTConfig
from ..errors import GPT2KitError
from ..fileio import read_json

TABLE_MAGIC = 0xDB4775248B80FB57  # tensorflow/core/lib/io/format.h kTableMagicNumber
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c
CRC_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> numpy dtype (bfloat16 is read as raw uint16)
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          9: np.int64, 10: np.bool_, 14: np.uint16, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_BFLOAT16 = 14


@dataclass
class TensorEntry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as TF stores it


# -- crc32c --------------------------------------------------------------------------------

def _crc32c(data) -> int:
    from ..extras import require

    google_crc32c = require("google_crc32c", "reading OpenAI's TF checkpoints (crc32c checks)")

    return google_crc32c.value(bytes(data) if not isinstance(data, bytes) else data)


def unmask_crc(masked: int) -> int:
    """TF/LevelDB store crc32c 'masked' (rotated and offset) so that CRCs of CRCs stay strong."""
    rot = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# -- protobuf wire format --------------------------------------------------------------------

class _Corrupt(Exception):
    pass


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, value) for a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _Corrupt("truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _Corrupt("truncated length-delimited field")
            value, pos = bytes(buf[pos : pos + n]), pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _Corrupt("truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        yield field, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_header(buf: bytes) -> dict:
    """BundleHeaderProto: num_shards = 1, endianness = 2 (0 little, 1 big), version = 3."""
    out = {"num_shards": 1, "endianness": 0}
    for f, v in _fields(buf):
        if f == 1:
            out["num_shards"] = v
        elif f == 2:
            out["endianness"] = v
    return out


def parse_entry(buf: bytes) -> TensorEntry:
    """BundleEntryProto: dtype 1, shape 2 (TensorShapeProto), shard_id 3, offset 4, size 5, crc32c 6, slices 7."""
    dtype, shape, shard, offset, size, crc = 0, [], 0, 0, 0, 0
    for f, v in _fields(buf):
        if f == 1:
            dtype = v
        elif f == 2:
            for sf, sv in _fields(v):  # TensorShapeProto.dim = 2, each a Dim {size = 1, name = 2}
                if sf == 2:
                    dim = dict(_fields(sv))
                    shape.append(_int64(dim.get(1, 0)))
                elif sf == 3 and sv:
                    raise _Corrupt("tensor of unknown rank")
        elif f == 3:
            shard = v
        elif f == 4:
            offset = v
        elif f == 5:
            size = v
        elif f == 6:
            crc = v
        elif f == 7:
            raise _Corrupt("partitioned (sliced) variables are not supported")
    return TensorEntry(dtype, tuple(shape), shard, offset, size, crc)


# -- the SSTable ---------------------------------------------------------------------------

def _block_handle(buf, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data):
        raise _Corrupt(f"block at byte {offset} runs past the end of the file")
    contents = data[offset : offset + size]
    ctype = data[offset + size]
    (masked,) = struct.unpack_from("<I", data, offset + size + 1)
    if unmask_crc(masked) != _crc32c(data[offset : offset + size + 1]):  # crc covers contents + type byte
        raise _Corrupt(f"block at byte {offset} fails its crc32c check")
    if ctype != 0:
        raise _Corrupt(f"block at byte {offset} is compressed (type {ctype}); only uncompressed tables are supported")
    return contents


def _block_entries(block: bytes):
    """Yield (key, value) from one block; keys share a prefix with the previous key."""
    if len(block) < 4:
        raise _Corrupt("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise _Corrupt("bad restart count")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise _Corrupt("bad block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + vlen]
        pos += vlen


def read_index(index_path: str) -> tuple[dict, dict[str, TensorEntry]]:
    """(header, {variable name: TensorEntry}) from a checkpoint's .index file."""
    try:
        with open(index_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise GPT2KitError(f"TF checkpoint index not found: {index_path}") from None
    try:
        if len(data) < FOOTER_SIZE:
            raise _Corrupt(f"only {len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer (truncated)")
        (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
        if magic != TABLE_MAGIC:
            raise _Corrupt("no table magic number at the end (truncated, or not a TF checkpoint index)")
        footer = data[-FOOTER_SIZE:]
        _, _, pos = _block_handle(footer, 0)  # the metaindex block: empty in TF checkpoints
        index_off, index_size, _ = _block_handle(footer, pos)
        header, entries = None, {}
        for _, handle in _block_entries(_read_block(data, index_off, index_size)):
            off, size, _ = _block_handle(handle, 0)
            for key, value in _block_entries(_read_block(data, off, size)):
                if key == b"":
                    header = parse_header(value)
                else:
                    entries[key.decode("utf-8")] = parse_entry(value)
        if header is None:
            raise _Corrupt("no bundle header entry")
    except _Corrupt as e:
        raise GPT2KitError(f"cannot read TF checkpoint index {index_path}: {e}; re-download the checkpoint") from None
    return header, entries


# -- tensors ---------------------------------------------------------------------------------

def checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix (.../model.ckpt) for a directory, a prefix, or a .index/.data file."""
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.exists(state):  # TF's state file: model_checkpoint_path: "model.ckpt"
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"', open(state, encoding="utf-8").read(), re.M)
            if m:
                p = m.group(1)
                p = p if os.path.isabs(p) and os.path.exists(p + ".index") else os.path.join(path, os.path.basename(p))
                if os.path.exists(p + ".index"):
                    return p
        found = sorted(f[: -len(".index")] for f in os.listdir(path) if f.endswith(".index"))
        if len(found) != 1:
            raise GPT2KitError(f"{path} holds {len(found)} TF checkpoints (*.index files); pass the prefix, e.g. {path}/model.ckpt")
        return os.path.join(path, found[0])
    if path.endswith(".index"):
        return path[: -len(".index")]
    m = re.match(r"(.*)\.data-\d{5}-of-\d{5}$", path)
    return m.group(1) if m else path


def read_tensors(prefix: str, names=None) -> dict[str, np.ndarray]:
    """Variables of a TF checkpoint as numpy arrays (all, or only `names`), crc-checked."""
    header, entries = read_index(prefix + ".index")
    if header["endianness"] not in (0, 1):
        raise GPT2KitError(f"{prefix}.index: unknown endianness {header['endianness']}")
    order = "<" if header["endianness"] == 0 else ">"
    n = header["num_shards"]
    out, shards = {}, {}
    try:
        for name in names if names is not None else entries:
            e = entries[name]
            if e.dtype not in DTYPES:
                raise GPT2KitError(f"{prefix}: variable {name} has TF dtype {e.dtype}, which gpt2kit does not read")
            dt = np.dtype(DTYPES[e.dtype]).newbyteorder(order)
            count = int(np.prod(e.shape)) if e.shape else 1
            if count * dt.itemsize != e.size:
                raise GPT2KitError(f"{prefix}.index: variable {name} has shape {e.shape} but {e.size} bytes (corrupt index)")
            shard_path = f"{prefix}.data-{e.shard_id:05d}-of-{n:05d}"
            if shard_path not in shards:
                try:
                    shards[shard_path] = np.memmap(shard_path, dtype=np.uint8, mode="r")
                except FileNotFoundError:
                    raise GPT2KitError(f"TF checkpoint data file not found: {shard_path}") from None
                except ValueError:  # numpy cannot map an empty file
                    shards[shard_path] = np.zeros(0, np.uint8)
            buf = shards[shard_path]
            if e.offset + e.size > len(buf):
                raise GPT2KitError(f"{shard_path} is truncated: variable {name} needs bytes {e.offset}..{e.offset + e.size} of {len(buf)}; re-download it")
            raw = buf[e.offset : e.offset + e.size]
            if unmask_crc(e.crc32c) != _crc32c(raw.tobytes()):
                raise GPT2KitError(f"{shard_path}: variable {name} fails its crc32c check (corrupt file); re-download it")
            arr = np.frombuffer(raw.tobytes(), dtype=dt).reshape(e.shape).astype(dt.newbyteorder("="))
            out[name] = arr
    except _Corrupt as e:
        raise GPT2KitError(f"cannot read TF checkpoint {prefix}: {e}") from None
    return out


# -- OpenAI's GPT-2 layout -> gpt2kit ----------------------------------------------------------

_LAYER = re.compile(r"model/h(\d+)/(ln_1|ln_2|attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/(g|b|w)$")
_TOP = {"model/wte": "transformer.wte.weight", "model/wpe": "transformer.wpe.weight",
        "model/ln_f/g": "transformer.ln_f.weight", "model/ln_f/b": "transformer.ln_f.bias"}
_PARAM = {"g": "weight", "b": "bias", "w": "weight"}


def gpt2kit_name(tf_name: str) -> str | None:
    """'model/h3/attn/c_attn/w' -> 'transformer.h.3.attn.c_attn.weight'; None for other variables."""
    if tf_name in _TOP:
        return _TOP[tf_name]
    m = _LAYER.match(tf_name)
    if not m:
        return None  # optimizer slots, global_step, ... (e.g. in fine-tuned checkpoints)
    layer, module, param = m.groups()
    return f"transformer.h.{layer}.{module.replace('/', '.')}.{_PARAM[param]}"


def config_from_hparams(hp: dict, source: str) -> GPTConfig:
    """OpenAI's hparams.json {n_vocab, n_ctx, n_embd, n_head, n_layer} -> GPTConfig."""
    try:
        return GPTConfig(block_size=hp["n_ctx"], vocab_size=hp["n_vocab"], n_layer=hp["n_layer"], n_head=hp["n_head"], n_embd=hp["n_embd"])
    except KeyError as e:
        raise GPT2KitError(f"{source} lacks {e.args[0]!r}; OpenAI's hparams.json has n_vocab, n_ctx, n_embd, n_head, n_layer") from None


def load_tf_state_dict(prefix: str) -> dict[str, torch.Tensor]:
    """gpt2kit-keyed tensors from an OpenAI GPT-2 checkpoint (conv1d [1, nx, nf] -> Linear (nf, nx))."""
    _, entries = read_index(prefix + ".index")
    names = {n: gpt2kit_name(n) for n in entries}
    names = {n: k for n, k in names.items() if k is not None}
    if "model/wte" not in names:
        raise GPT2KitError(f"{prefix} is a TF checkpoint but not an OpenAI GPT-2 one (no model/wte variable)")
    arrays = read_tensors(prefix, list(names))
    sd = {}
    for tf_name, key in names.items():
        a = arrays[tf_name]
        if tf_name.endswith("/w"):
            if a.ndim != 3 or a.shape[0] != 1:
                raise GPT2KitError(f"{prefix}: {tf_name} has shape {a.shape}; OpenAI's conv1d weights are [1, nx, nf]")
            a = a[0].T  # (nx, nf) -> (nf, nx)
        t = torch.from_numpy(np.ascontiguousarray(a))
        if entries[tf_name].dtype == DT_BFLOAT16:
            t = t.view(torch.bfloat16)
        sd[key] = t.float() if t.is_floating_point() else t
    return sd


def is_tf_checkpoint(path: str) -> bool:
    if os.path.isdir(path):
        return any(f.endswith(".index") for f in os.listdir(path))
    return path.endswith(".index") or os.path.exists(path + ".index") or bool(re.search(r"\.data-\d{5}-of-\d{5}$", path))


def load_openai_checkpoint(path: str):
    """(GPT, tokenizer or None) from OpenAI's download folder or a checkpoint prefix.

    hparams.json is looked up beside the checkpoint. The tokenizer is GPT-2's when
    encoder.json/vocab.bpe are OpenAI's own (or absent with n_vocab 50257).
    """
    from ..weights import build_model

    prefix = checkpoint_prefix(path)
    folder = os.path.dirname(prefix) or "."
    hp_path = os.path.join(folder, "hparams.json")
    cfg = config_from_hparams(read_json(hp_path, "OpenAI hparams.json"), hp_path)
    model = build_model(cfg, load_tf_state_dict(prefix), source=prefix)
    return model, _openai_tokenizer(folder, cfg.vocab_size)


def _openai_tokenizer(folder: str, n_vocab: int):
    import hashlib

    from ..tokenization.gpt2 import ENCODER_SHA256, VOCAB_BPE_SHA256, GPT2Tokenizer

    enc, bpe = os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")
    if os.path.exists(enc) and os.path.exists(bpe):
        same = (hashlib.sha256(open(enc, "rb").read()).hexdigest() == ENCODER_SHA256
                and hashlib.sha256(open(bpe, "rb").read()).hexdigest() == VOCAB_BPE_SHA256)
        if not same:
            raise GPT2KitError(f"{folder}: encoder.json/vocab.bpe differ from GPT-2's; gpt2kit converts only checkpoints with OpenAI's GPT-2 vocabulary")
        if n_vocab != 50257:
            raise GPT2KitError(f"{folder}: hparams.json says n_vocab {n_vocab} but encoder.json is GPT-2's 50257-token vocabulary; the folder mixes two models")
        return GPT2Tokenizer()
    return GPT2Tokenizer() if n_vocab == 50257 else None
