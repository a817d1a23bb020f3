"""Stream checkpoint tensors one at a time as (HF state_dict name, tensor).

The caller copies each tensor into its own parameter and drops it, so peak memory is
the model plus one tensor, never the whole checkpoint.
"""

from __future__ import annotations

import glob
import json
import logging
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_cli.model_executor.model_source import (
    ModelSource,
    cache_stamp,
    commit_cache_entry,
    config_fingerprint,
    gguf_cache_dir,
    load_hf_config,
)

logger = logging.getLogger(__name__)

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


def iterate_weights(source: ModelSource, *, hf_config: Any = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF parameter name, tensor) one tensor at a time, in the checkpoint's dtype
    (float32 for GGUF, which is dequantized). The caller casts and copies."""
    if source.gguf_file:
        yield from _iterate_gguf(os.path.join(source.path, source.gguf_file), hf_config or load_hf_config(source))
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
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
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


# --------------------------------------------------------------------------- GGUF


def _gguf_name_map(
    hf_config: Any, processor: Any, arch: str, n_blocks: int
) -> tuple[dict[str, str], dict[str, torch.Size]]:
    """GGUF tensor name -> HF name, and HF name -> shape, as transformers' GGUF loader maps them.

    Same rule as transformers' get_gguf_hf_weights_map (gguf's TensorNameMap applied to the
    state_dict names of a model built on the meta device, and to each submodule's relative names,
    shallower modules first), but with one TensorNameMap instead of one per module (5 s -> 0.1 s).
    The arch comes from the file itself, so no model_type -> gguf-arch alias table is needed.
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers import AutoModel, AutoModelForCausalLM

    gguf_arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if gguf_arch is None:
        raise NotImplementedError(f"GGUF architecture '{arch}' is unknown to the installed gguf package")
    name_map = get_tensor_name_map(gguf_arch, n_blocks)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(hf_config)
        except ValueError:  # encoder-only / base architectures
            model = AutoModel.from_config(hf_config)

    result: dict[str, str] = {}
    for qual, module in model.named_modules():  # pre-order, like transformers' recursion
        prefix = f"{qual}." if qual else ""
        local: dict[str, str] = {}
        for hf_name in module.state_dict():
            hf_name = processor.preprocess_name(hf_name)
            name, suffix = hf_name, ""
            if hf_name.endswith((".weight", ".bias")):
                name, suffix = hf_name.rsplit(".", 1)
                suffix = "." + suffix
            gguf_name = name_map.get_name(name)
            if gguf_name is None:
                processor.perform_fallback_tensor_mapping(local, suffix, prefix, hf_name)
            else:
                local[gguf_name + suffix] = prefix + hf_name
        for k, v in local.items():
            result.setdefault(k, v)
    return result, {k: v.shape for k, v in model.state_dict().items()}


def _to_torch(weights: np.ndarray) -> torch.Tensor:
    # F32 tensors come back as read-only views of the memory-mapped file: copy those only.
    if not weights.flags.writeable or not weights.flags.c_contiguous:
        weights = np.array(weights, order="C")
    return torch.from_numpy(weights)


# GGUF metadata value types (gguf.GGUFValueType) -> struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray  # as gguf.GGUFReader gives it: typed for float/int types, else the raw bytes of each row


@dataclass
class GGUFFile:
    metadata: dict[str, Any]  # scalar and string fields; arrays (the vocab, merges...) are left out
    tensors: list[GGUFTensor]


def read_gguf(path: str) -> GGUFFile:
    """The tensors and scalar metadata of a .gguf, memory-mapped.

    gguf.GGUFReader builds numpy objects for every element of every metadata array, i.e. the whole
    tokenizer vocab (~2 s for a 49k vocab); the weights need none of it, so this reader steps over
    the arrays and reads only the tensor table (~0.05 s). Tensor data are the same memory-mapped
    arrays GGUFReader gives. Files it does not handle (big-endian, version 1) go to GGUFReader.
    """
    from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        magic, version = struct.unpack_from("<II", buf, 0)
        if magic != GGUF_MAGIC or version not in (2, 3):
            return _read_gguf_with_reader(path)  # GGUFReader explains what is wrong, or reads it
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + n
            return buf[pos - n:pos].decode("utf-8", errors="replace")

        def value(vtype: int) -> Any:
            nonlocal pos
            if vtype == _GGUF_STRING:
                return string()
            if vtype == _GGUF_ARRAY:
                etype, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if etype in _GGUF_SCALARS:
                    pos += count * struct.calcsize("<" + _GGUF_SCALARS[etype])
                else:
                    for _ in range(count):  # strings or nested arrays: step over each
                        value(etype)
                return None
            fmt = "<" + _GGUF_SCALARS[vtype]
            (v,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return v

        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            v = value(vtype)
            if v is not None:
                metadata[key] = v
        infos = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            ttype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, dims, GGMLQuantizationType(ttype), offset))
    finally:
        buf.close()
    if len({name for name, *_ in infos}) != len(infos):
        raise ValueError(f"{path}: duplicated tensor names")
    alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"{path}: invalid alignment {alignment}")
    data_start = -(-pos // alignment) * alignment

    typed = {GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
             GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
             GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
             GGMLQuantizationType.I64: np.int64}
    data = np.memmap(path, mode="r")
    tensors = []
    for name, dims, ttype, offset in infos:
        n_elems = int(np.prod(dims))
        np_shape = tuple(reversed(dims))
        start = data_start + offset
        if ttype in typed:
            dtype = np.dtype(typed[ttype])
            array = data[start:start + n_elems * dtype.itemsize].view(dtype).reshape(np_shape)
        else:
            block_size, type_size = GGML_QUANT_SIZES[ttype]
            array = data[start:start + n_elems * type_size // block_size]
            array = array.reshape(quant_shape_to_byte_shape(np_shape, ttype))
        tensors.append(GGUFTensor(name, ttype, array))
    return GGUFFile(metadata, tensors)


def _read_gguf_with_reader(path: str) -> GGUFFile:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    metadata = {key: field.contents() for key, field in reader.fields.items()
                if field.types and field.types[0] != GGUFValueType.ARRAY}
    return GGUFFile(metadata, [GGUFTensor(t.name, t.tensor_type, t.data) for t in reader.tensors])


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _gguf_tensor_map(
    path: str, hf_config: Any, processor: Any, arch: str, n_blocks: int
) -> tuple[dict[str, str], dict[str, torch.Size]]:
    """_gguf_name_map, kept in the file's GGUF cache entry (model_source): building it imports
    transformers' model classes (~1 s). Used only for the same config, arch and library versions."""
    cache_dir = gguf_cache_dir(path)
    target = os.path.join(cache_dir, "tensor_map.json") if cache_dir else None
    key = {
        "stamp": cache_stamp(gguf=_dist_version("gguf")), "config": config_fingerprint(hf_config),
        "processor": type(processor).__name__, "arch": arch, "n_blocks": n_blocks,
    }
    if target:
        try:
            with open(target, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return cached["names"], {k: torch.Size(v) for k, v in cached["shapes"].items()}
        except FileNotFoundError:
            pass
        except Exception as e:  # a damaged entry is rebuilt
            logger.debug("GGUF cache: ignoring %s: %s", target, e)
    names, shapes = _gguf_name_map(hf_config, processor, arch, n_blocks)
    if target:
        text = json.dumps({"key": key, "names": names, "shapes": {k: list(v) for k, v in shapes.items()}})

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

        commit_cache_entry(target, write)
    return names, shapes


def _iterate_gguf(path: str, hf_config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    gguf_file = read_gguf(path)
    arch = gguf_file.metadata["general.architecture"]
    # transformers' per-arch processor undoes llama.cpp's conversions: for "llama" it reverses the
    # rotary Q/K row permutation; gpt2 transposes, gemma/nemotron norms get -1, bloom's fused qkv...
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config.to_dict())
    n_blocks = gguf_file.metadata.get(f"{arch}.block_count") or getattr(hf_config, "num_hidden_layers", 0)
    name_map, shapes = _gguf_tensor_map(path, hf_config, processor, arch, int(n_blocks))
    # Some processors (MoE experts, gpt2's lm_head) write into this side dict instead of returning a name.
    side: dict[str, dict[str, torch.Tensor]] = {"tensors": {}}

    for t in gguf_file.tensors:
        weights = dequantize(t.data, t.tensor_type)  # float32, numpy shape = reversed GGUF shape
        result = processor.process(weights=weights, name=t.name, tensor_key_mapping=name_map, parsed_parameters=side)
        if result.name is None:
            continue
        hf_name = name_map.get(result.name)
        if hf_name is None:  # e.g. rope_freqs: transformers skips these too
            logger.debug("GGUF tensor %s has no transformers counterpart; skipped", result.name)
            continue
        tensor = _to_torch(result.weights)
        if (shape := shapes.get(hf_name)) is not None and tensor.shape != shape:
            if tensor.numel() != shape.numel():
                got, want = tuple(tensor.shape), tuple(shape)
                raise ValueError(f"GGUF tensor {t.name}: shape {got} does not fit {hf_name} {want}")
            tensor = tensor.reshape(shape)
        yield hf_name, tensor
    # Tensors assembled across several GGUF tensors (fused MoE experts) are complete only now.
    yield from side["tensors"].items()
