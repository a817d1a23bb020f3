"""Everything GGUF: the config, the tokenizer and the weights of a .gguf file, and their on-disk cache.

Public surface:
  load_gguf_config(directory, gguf_file)            the transformers config (cached)
  load_gguf_tokenizer(directory, gguf_file)         the transformers tokenizer (cached)
  iterate_gguf_weights(gguf_path, hf_config, keep_quantized)
                                                    (HF name, float32 tensor or QuantizedWeight) one at a time
  read_gguf(gguf_path) -> GGUFFile                  scalar metadata and memory-mapped tensor data
  gguf_cache_root(), gguf_cache_dir(gguf_path), CACHE_DIR_ENV

The weights are dequantized to float32 and llama.cpp's conversions (e.g. the rotary Q/K row
permutation) are undone, so that a model loads them exactly like a safetensors checkpoint; 2-D
tensors of the types the quantized layers run (layers/quantization.py) may instead stay in their
blocks, rows reordered by the same conversion.

The metadata cache: transformers needs seconds to turn a GGUF's metadata into a config and a fast
tokenizer (it parses the whole 49k-token vocab each time), and building the tensor-name map imports
transformers' model classes (~1 s). The results are saved once per file, keyed by its name, size and
mtime, under <root>/<stem>-<size>-<mtime_ns>/, and read back in ~0.1 s:
  config.json      the converted config (never a quantization_config: nothing re-reads the gguf)
  tokenizer/       tokenizer.save_pretrained() (tokenizer.json, chat template, special tokens)
  tensor_map.json  GGUF tensor name -> HF name, HF shapes
Every entry is stamped with the transformers version that made it (another version rebuilds it),
is checked against the original before it is saved, and is written to a temporary name and renamed
into place. A cache that cannot be read or written only costs speed, never the load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
import transformers
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MODEL_ARCH_NAMES,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    get_tensor_name_map,
)
from gguf.quants import dequantize, quant_shape_to_byte_shape
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vllm_cli.config import cache_home
from vllm_cli.model_executor.layers.quantization import QuantizedWeight

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the cache: where and how

CACHE_DIR_ENV = "VLLM_CLI_CACHE_DIR"
_CACHE_FORMAT = 1
_STAMP_KEY = "_vllm_cli_cache"
_TOKENIZER_STAMP_FILE = "vllm_cli_cache.json"
# Config keys that say where/by what a config was loaded rather than what the model is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "quantization_config", _STAMP_KEY)
# Round-trip probes for a saved tokenizer: special tokens, bytes, emoji, whitespace runs.
_TOKENIZER_PROBES = (
    "Hello world",
    "The café serves 日本語 👍🏽 emoji!",
    "  two  spaces\n\n\ttab",
    "<|im_start|>user\nhi<|im_end|>\n<s></s>[INST]",
)


def gguf_cache_root() -> str:
    """$VLLM_CLI_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/vllm-cli/gguf."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        return os.path.join(cache_home(), "gguf")
    return os.path.abspath(os.path.expanduser(root))


def gguf_cache_dir(gguf_path: str | None) -> str | None:
    """The cache directory of one .gguf file (which may not exist yet); None if the file cannot be stat'ed."""
    if not gguf_path:
        return None
    try:
        st = os.stat(gguf_path)
    except OSError:
        return None
    stem = os.path.splitext(os.path.basename(gguf_path))[0]
    return os.path.join(gguf_cache_root(), f"{stem}-{st.st_size}-{st.st_mtime_ns}")


def _cache_stamp(**extra: Any) -> dict[str, Any]:
    """What a cache entry must match to be used: the cache format and the converting library versions."""
    return {"format": _CACHE_FORMAT, "transformers": transformers.__version__, **extra}


def _commit_cache_entry(target: str, write: Callable[[str], None]) -> bool:
    """Build a cache entry with write(tmp) at a temporary path beside `target` (a file or a directory,
    whatever `write` makes there), then rename it to `target`. False, logged at debug level, on failure."""
    parent = os.path.dirname(target)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(parent, exist_ok=True)
        write(tmp)
        if os.path.isdir(tmp) and os.path.isdir(target):  # a stale entry: a directory cannot be replaced
            stale = tmp + ".stale"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
        return True
    except Exception as e:  # read-only or full disk, permissions, a concurrent writer...
        logger.debug("GGUF cache: could not write %s: %s", target, e)
        return False
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def _commit_text(target: str, text: str) -> bool:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _commit_cache_entry(target, write)


# --------------------------------------------------------------------------- config


def load_gguf_config(directory: str, gguf_file: str) -> PretrainedConfig:
    """The transformers config of directory/gguf_file: from the cache, else converted by transformers
    (AutoConfig.from_pretrained(directory, gguf_file=...)) and cached."""
    cache_dir = gguf_cache_dir(os.path.join(directory, gguf_file))
    config = _cached_config(cache_dir, directory) if cache_dir else None
    if config is None:
        config = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
        if cache_dir:
            _save_config(cache_dir, config)
    return config


def _config_fingerprint(config: Any) -> str:
    """A hash of what a config says about the model (not where it was loaded from)."""
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _config_from_cache_dict(raw: dict[str, Any]) -> PretrainedConfig | None:
    raw = {k: v for k, v in raw.items() if k not in (_STAMP_KEY, "quantization_config")}
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    return CONFIG_MAPPING[model_type].from_dict(raw)


def _cached_config(cache_dir: str, name_or_path: str) -> PretrainedConfig | None:
    path = os.path.join(cache_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get(_STAMP_KEY) != _cache_stamp():
            return None
        config = _config_from_cache_dict(raw)
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged entry is rebuilt
        logger.debug("GGUF cache: ignoring %s: %s", path, e)
        return None
    if config is not None:
        config.name_or_path = name_or_path  # as if loaded from the gguf's directory
    return config


def _save_config(cache_dir: str, config: PretrainedConfig) -> None:
    try:
        raw = {k: v for k, v in config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
        raw[_STAMP_KEY] = _cache_stamp()
        text = json.dumps(raw, indent=2, sort_keys=True)
        reloaded = _config_from_cache_dict(json.loads(text))
        if reloaded is None or _config_fingerprint(reloaded) != _config_fingerprint(config):
            logger.debug(
                "GGUF cache: the %s config does not survive a JSON round trip; not cached",
                getattr(config, "model_type", "?"),
            )
            return
    except Exception as e:
        logger.debug("GGUF cache: cannot serialize the config: %s", e)
        return
    _commit_text(os.path.join(cache_dir, "config.json"), text)


# --------------------------------------------------------------------------- tokenizer


def load_gguf_tokenizer(
    directory: str, gguf_file: str, *, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of directory/gguf_file (a local file): from the cache, else converted by transformers
    (AutoTokenizer.from_pretrained(directory, gguf_file=...)) and cached. Conversion errors propagate;
    the cache never raises."""
    gguf_path = os.path.join(directory, gguf_file)
    cached = _cached_tokenizer(gguf_path, directory, trust_remote_code=trust_remote_code)
    if cached is not None:
        return cached
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, **kwargs)
    _save_tokenizer(gguf_path, tokenizer, trust_remote_code=trust_remote_code)
    return tokenizer


def _cached_tokenizer(gguf_path: str, name_or_path: str, **kwargs: Any) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved for this .gguf by _save_tokenizer, or None (not cached, stale, unreadable)."""
    cache_dir = gguf_cache_dir(gguf_path)
    if cache_dir is None:
        return None
    tok_dir = os.path.join(cache_dir, "tokenizer")
    try:
        with open(os.path.join(tok_dir, _TOKENIZER_STAMP_FILE), encoding="utf-8") as f:
            if json.load(f) != _cache_stamp():
                return None
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, **kwargs)
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged entry is rebuilt
        logger.debug("GGUF cache: ignoring %s: %s", tok_dir, e)
        return None
    if hasattr(tokenizer, "name_or_path"):
        tokenizer.name_or_path = name_or_path  # as if loaded from the gguf's directory
    return tokenizer


def _tokenizer_signature(tokenizer: Any) -> tuple:
    """Everything the engine and the chat template use, for comparing a saved tokenizer with the original."""
    probes = [tokenizer.encode(text) for text in _TOKENIZER_PROBES]
    return (
        type(tokenizer).__name__,
        len(tokenizer),
        tokenizer.get_vocab(),
        {i: str(t) for i, t in tokenizer.added_tokens_decoder.items()},
        tokenizer.special_tokens_map,
        tokenizer.all_special_ids,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        tokenizer.chat_template,
        probes,
        [tokenizer.decode(ids) for ids in probes],
        [tokenizer.decode(ids, skip_special_tokens=True) for ids in probes],
    )


def _save_tokenizer(gguf_path: str, tokenizer: Any, **kwargs: Any) -> bool:
    """Save the tokenizer converted from this .gguf for _cached_tokenizer; False if not cached."""
    cache_dir = gguf_cache_dir(gguf_path)
    if cache_dir is None or not hasattr(tokenizer, "save_pretrained"):
        return False

    def write(tmp: str) -> None:
        tokenizer.save_pretrained(tmp)
        # Only a tokenizer that reloads identically is worth caching.
        if _tokenizer_signature(AutoTokenizer.from_pretrained(tmp, **kwargs)) != _tokenizer_signature(tokenizer):
            raise ValueError("the saved tokenizer does not reload identically")
        with open(os.path.join(tmp, _TOKENIZER_STAMP_FILE), "w", encoding="utf-8") as f:
            json.dump(_cache_stamp(), f)

    return _commit_cache_entry(os.path.join(cache_dir, "tokenizer"), write)


# --------------------------------------------------------------------------- reading the file

# GGUF metadata value types (gguf.GGUFValueType) -> struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# Tensor types stored as plain numpy arrays; every other type is quantized blocks (raw bytes per row).
_TYPED = {
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclass
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
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
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        magic, file_version = struct.unpack_from("<II", buf, 0)
        if magic != GGUF_MAGIC or file_version not in (2, 3):
            return _read_gguf_with_reader(path)  # GGUFReader explains what is wrong, or reads it
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + n
            return buf[pos - n : pos].decode("utf-8", errors="replace")

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

    data = np.memmap(path, mode="r")
    tensors = []
    for name, dims, ttype, offset in infos:
        n_elems = int(np.prod(dims))
        np_shape = tuple(reversed(dims))
        start = data_start + offset
        if ttype in _TYPED:
            dtype = np.dtype(_TYPED[ttype])
            array = data[start : start + n_elems * dtype.itemsize].view(dtype).reshape(np_shape)
        else:
            block_size, type_size = GGML_QUANT_SIZES[ttype]
            array = data[start : start + n_elems * type_size // block_size]
            array = array.reshape(quant_shape_to_byte_shape(np_shape, ttype))
        tensors.append(GGUFTensor(name, ttype, array))
    return GGUFFile(metadata, tensors)


def _read_gguf_with_reader(path: str) -> GGUFFile:
    reader = GGUFReader(path)
    metadata = {
        key: field.contents()
        for key, field in reader.fields.items()
        if field.types and field.types[0] != GGUFValueType.ARRAY
    }
    return GGUFFile(metadata, [GGUFTensor(t.name, t.tensor_type, t.data) for t in reader.tensors])


# --------------------------------------------------------------------------- weights


def iterate_gguf_weights(
    path: str, hf_config: Any, keep_quantized: Collection[str] = ()
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Yield (HF parameter name, tensor) for each tensor of the .gguf at `path`, with llama.cpp's
    conversions undone, in the shape of the transformers model built from hf_config: float32
    (dequantized), except 2-D tensors of the types named in keep_quantized ("q4_1", ...), which come
    as QuantizedWeight (their blocks, rows reordered as the conversion reorders them)."""
    gguf_file = read_gguf(path)
    arch = gguf_file.metadata["general.architecture"]
    # transformers' per-arch processor undoes llama.cpp's conversions: for "llama" it reverses the
    # rotary Q/K row permutation; gpt2 transposes, gemma/nemotron norms get -1, bloom's fused qkv...
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config.to_dict())
    n_blocks = int(gguf_file.metadata.get(f"{arch}.block_count") or getattr(hf_config, "num_hidden_layers", 0) or 0)
    name_map, shapes = _gguf_tensor_map(path, hf_config, processor, arch, n_blocks)
    # Some processors (MoE experts, gpt2's lm_head) write into this side dict instead of returning a name.
    side: dict[str, dict[str, torch.Tensor]] = {"tensors": {}}

    for t in gguf_file.tensors:
        quantized = _quantized_weight(t, processor, name_map, shapes, keep_quantized)
        if quantized is not None:
            yield name_map[t.name], quantized
            continue
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


def _quantized_weight(
    t: GGUFTensor,
    processor: Any,
    name_map: dict[str, str],
    shapes: dict[str, torch.Size],
    keep_quantized: Collection[str],
) -> QuantizedWeight | None:
    """t's blocks as a QuantizedWeight, when it is a 2-D tensor of a kept type in the shape of its HF
    parameter and the processor's conversion of it only reorders rows; else None (dequantize it)."""
    qtype = t.tensor_type.name.lower()
    if qtype not in keep_quantized or t.data.ndim != 2 or t.name not in name_map:
        return None
    rows, row_bytes = t.data.shape
    block_elems, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
    shape = torch.Size((rows, row_bytes // block_bytes * block_elems))
    if shapes.get(name_map[t.name], shape) != shape:
        return None
    # Which rows the conversion moves where: run it on the row indices (a [rows, 1] column). A
    # conversion that changes the shape, the values or the name is not a row permutation.
    probe = np.arange(rows, dtype=np.float64).reshape(rows, 1)
    result = processor.process(weights=probe, name=t.name, tensor_key_mapping=name_map, parsed_parameters={})
    order = np.asarray(result.weights)
    if result.name != t.name or order.shape != (rows, 1) or not np.array_equal(np.sort(order[:, 0]), probe[:, 0]):
        return None
    order = order[:, 0].astype(np.int64)
    data = np.array(t.data, order="C") if np.array_equal(order, probe[:, 0]) else np.ascontiguousarray(t.data[order])
    return QuantizedWeight(torch.from_numpy(data), qtype, shape, name=t.name)


def _to_torch(weights: np.ndarray) -> torch.Tensor:
    # F32 tensors come back as read-only views of the memory-mapped file: copy those only.
    if not weights.flags.writeable or not weights.flags.c_contiguous:
        weights = np.array(weights, order="C")
    return torch.from_numpy(weights)


def _gguf_name_map(
    hf_config: Any, processor: Any, arch: str, n_blocks: int
) -> tuple[dict[str, str], dict[str, torch.Size]]:
    """GGUF tensor name -> HF name, and HF name -> shape, as transformers' GGUF loader maps them.

    Same rule as transformers' get_gguf_hf_weights_map (gguf's TensorNameMap applied to the
    state_dict names of a model built on the meta device, and to each submodule's relative names,
    shallower modules first), but with one TensorNameMap instead of one per module (5 s -> 0.1 s).
    The arch comes from the file itself, so no model_type -> gguf-arch alias table is needed.
    """
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


def _dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _gguf_tensor_map(
    path: str, hf_config: Any, processor: Any, arch: str, n_blocks: int
) -> tuple[dict[str, str], dict[str, torch.Size]]:
    """_gguf_name_map, kept in the file's cache entry: building it imports transformers' model classes
    (~1 s). Used only for the same config, arch and library versions."""
    cache_dir = gguf_cache_dir(path)
    target = os.path.join(cache_dir, "tensor_map.json") if cache_dir else None
    key = {
        "stamp": _cache_stamp(gguf=_dist_version("gguf")),
        "config": _config_fingerprint(hf_config),
        "processor": type(processor).__name__,
        "arch": arch,
        "n_blocks": n_blocks,
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
        _commit_text(
            target, json.dumps({"key": key, "names": names, "shapes": {k: list(v) for k, v in shapes.items()}})
        )
    return names, shapes
