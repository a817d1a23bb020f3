"""Stream checkpoint tensors one at a time as (HF state_dict name, tensor).

The caller copies each tensor into its own parameter and drops it, so peak memory is
the model plus one tensor, never the whole checkpoint.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import struct
from collections.abc import Collection, Iterator
from typing import Any

import torch

from vllm_cli.model_executor.gguf import iterate_gguf_weights
from vllm_cli.model_executor.layers.quantization import QuantizedWeight
from vllm_cli.model_executor.model_source import ModelSource, load_hf_config

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"
_FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32}


def _indexed_files(path: str, index_name: str, pattern: str) -> list[str]:
    # The index names the shards that make one checkpoint; without it take every match
    # (a repo may also carry unrelated files, e.g. consolidated.safetensors, but then it has an index).
    index = os.path.join(path, index_name)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    return sorted(glob.glob(os.path.join(path, pattern)))


def _safetensors_files(path: str) -> list[str]:
    return _indexed_files(path, _SAFETENSORS_INDEX, "*.safetensors")


def _bin_files(path: str) -> list[str]:
    files = _indexed_files(path, _BIN_INDEX, "pytorch_model*.bin")
    return [f for f in files if not os.path.basename(f).startswith("training_args")]


def weight_files(source: ModelSource) -> list[str]:
    """The files iterate_weights reads: the .gguf, else safetensors, else pytorch .bin."""
    if source.gguf_file:
        return [os.path.join(source.path, source.gguf_file)]
    return _safetensors_files(source.path) or _bin_files(source.path)


def weights_size_bytes(source: ModelSource) -> int:
    """Total bytes of the weight files (for the load log line)."""
    return sum(os.path.getsize(f) for f in weight_files(source))


def checkpoint_dtype(hf_config: Any) -> torch.dtype | None:
    """The checkpoint's float dtype from the config (`dtype`, or the older `torch_dtype`), else None."""
    for attr in ("dtype", "torch_dtype"):
        value = getattr(hf_config, attr, None)
        if isinstance(value, str):
            value = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(value, torch.dtype):
            return value if value in _FLOAT_DTYPES else None
    return None


def iterate_weights(
    source: ModelSource, *, hf_config: Any = None, keep_quantized: Collection[str] = ()
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Yield (HF parameter name, tensor) one tensor at a time, in the checkpoint's dtype
    (float32 for GGUF, which is dequantized: model_executor/gguf.py, except the 2-D tensors of the
    GGUF types in keep_quantized, which come as QuantizedWeight). The caller casts and copies."""
    if source.gguf_file:
        gguf_path = os.path.join(source.path, source.gguf_file)
        yield from iterate_gguf_weights(gguf_path, hf_config or load_hf_config(source), keep_quantized)
        return
    if files := _safetensors_files(source.path):
        for file in files:
            yield from _iterate_safetensors(file)
        return
    if files := _bin_files(source.path):
        for file in files:
            # mmap: tensors stay on disk until copied; weights_only: no pickle code execution.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for key in list(state):
                yield key, state.pop(key)
            del state
        return
    raise FileNotFoundError(f"no *.safetensors, pytorch_model*.bin or .gguf weights in {source.path}")


# --------------------------------------------------------------------------- safetensors

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _iterate_safetensors(file: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Zero-copy views of the file's tensors (mmap): bytes are read only when the loader copies
    them, so a tensor-parallel rank that copies its slice reads only that slice's pages."""
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        # copy-on-write: torch wants a writable buffer; nothing is ever written back to the file
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if os.path.getsize(file) > 8 + header_len else None
    header.pop("__metadata__", None)
    base = 8 + header_len
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):  # file order
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}, which is not supported")
        start, end = info["data_offsets"]
        shape = info["shape"]
        if end == start:
            yield name, torch.empty(shape, dtype=dtype)
            continue
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        yield name, torch.frombuffer(mapped, dtype=dtype, count=count, offset=base + start).view(shape)
