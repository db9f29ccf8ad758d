"""Read and write safetensors files with NumPy, with errors that say exactly what is wrong.

The reader is our own (the format is an 8-byte header length, a JSON header and raw little-endian
data) so that it can read bf16, which NumPy lacks, and name the offending key in every error.
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np
import safetensors.numpy

from snnlm.errors import SnnlmError
from snnlm.fileio import atomic_write_bytes

_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a safetensors file, and its `__metadata__`.

    bf16 tensors come back as float32; every other dtype as stored. Arrays are read-only views
    of a memory map when the file is aligned, so loading a large checkpoint is cheap.
    """
    path = Path(path)
    if not path.is_file():
        raise SnnlmError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SnnlmError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise SnnlmError(f"{path}: not a safetensors file (header length {header_len} does not fit in {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SnnlmError(f"{path}: not a safetensors file (its header is not JSON)") from None
        if not isinstance(header, dict):
            raise SnnlmError(f"{path}: not a safetensors file (its header is not a JSON object)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else b""
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors = {}
    for key, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SnnlmError(f"{path}: tensor {key!r} has a malformed header entry") from None
        if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
            raise SnnlmError(f"{path}: tensor {key!r} has a malformed header entry (shape {shape}, offsets {begin}, {end})")
        if dtype != "BF16" and dtype not in _NUMPY_DTYPES:
            raise SnnlmError(f"{path}: tensor {key!r} has dtype {dtype}, which snnlm cannot read")
        n = int(np.prod(shape, dtype=np.int64))
        itemsize = 2 if dtype == "BF16" else np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if end - begin != n * itemsize:
            raise SnnlmError(f"{path}: tensor {key!r} of shape {shape} and dtype {dtype} needs {n * itemsize} bytes, header gives {end - begin}")
        if data_start + end > size:
            raise SnnlmError(f"{path}: truncated: tensor {key!r} ends at byte {data_start + end}, the file has {size} bytes")
        raw = np.frombuffer(buf, dtype=np.uint8, count=end - begin, offset=data_start + begin)
        if dtype == "BF16":
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif (data_start + begin) % itemsize == 0:
            arr = raw.view(np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"))
        else:
            arr = np.frombuffer(raw.tobytes(), dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"))
        tensors[key] = arr.reshape(shape)
    return tensors, metadata


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (contiguous NumPy arrays) and string `metadata` to `path` atomically."""
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.numpy.save(contiguous, metadata=metadata))
