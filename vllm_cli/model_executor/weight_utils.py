"""Stream checkpoint tensors one at a time as (HF state_dict name, tensor).

The caller copies each tensor into its own parameter and drops it, so peak memory is
the model plus one tensor, never the whole checkpoint.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vllm_cli.model_executor.model_source import ModelSource, load_hf_config

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
        from safetensors import safe_open

        for file in files:
            with safe_open(file, framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
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


def _iterate_gguf(path: str, hf_config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, read_field

    reader = GGUFReader(path)
    arch = read_field(reader, "general.architecture")[0]
    # transformers' per-arch processor undoes llama.cpp's conversions: for "llama" it reverses the
    # rotary Q/K row permutation; gpt2 transposes, gemma/nemotron norms get -1, bloom's fused qkv...
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config.to_dict())
    n_blocks = read_field(reader, f"{arch}.block_count") or [getattr(hf_config, "num_hidden_layers", 0)]
    name_map, shapes = _gguf_name_map(hf_config, processor, arch, int(n_blocks[0]))
    # Some processors (MoE experts, gpt2's lm_head) write into this side dict instead of returning a name.
    side: dict[str, dict[str, torch.Tensor]] = {"tensors": {}}

    for t in reader.tensors:
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
