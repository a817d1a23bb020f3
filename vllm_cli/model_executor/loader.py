"""Build a model from a ModelSource: our implementation, materialized once in the target
dtype and device, filled from the checkpoint one tensor at a time (or randomly for
--load-format dummy)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import cast

import torch
from torch import nn
from transformers import PretrainedConfig

from vllm_cli.distributed.parallel_state import get_tp_rank, get_tp_size
from vllm_cli.kernels import quant
from vllm_cli.logger import init_logger
from vllm_cli.model_executor.layers.cpu_linear import optimize_linears_for_cpu
from vllm_cli.model_executor.layers.quantization import (
    check_loaded,
    fill_dummy,
    model_weight_bytes,
    quantization_summary,
    quantize_model,
    quantized_numel,
    resolve_quantization,
)
from vllm_cli.model_executor.model_source import ModelSource
from vllm_cli.model_executor.models import get_model_class, is_base_model
from vllm_cli.model_executor.weight_utils import checkpoint_dtype, iterate_weights

logger = init_logger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, hf_config: PretrainedConfig, device: torch.device) -> torch.dtype:
    """auto: float32 on CPU; on CUDA the checkpoint's 16-bit type (float16 for float32 checkpoints)."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    stored = checkpoint_dtype(hf_config)
    return stored if stored in (torch.float16, torch.bfloat16) else torch.float16


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device(device)


def _materialize(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Replace meta parameters by uninitialized real ones, keeping tied parameters tied."""
    replaced: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in replaced:
                target_dtype = dtype if param.is_floating_point() else param.dtype
                replaced[id(param)] = nn.Parameter(
                    torch.empty(param.shape, dtype=target_dtype, device=device), requires_grad=False
                )
            module._parameters[name] = replaced[id(param)]
    model.to(device)  # buffers (rotary tables, ALiBi slopes) were built on the CPU


def load_model(
    source: ModelSource,
    hf_config: PretrainedConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    seed: int = 0,
    model_impl: str = "auto",
    quantization: str = "auto",
    quantize_lm_head: bool = False,
) -> nn.Module:
    cls = get_model_class(hf_config, model_impl)
    if get_tp_size() > 1 and not getattr(cls, "supports_tensor_parallel", True):
        raise ValueError(
            f"tensor parallelism needs a native implementation; {_arch_name(hf_config)} would run "
            "through the transformers fallback, which runs on one rank only"
        )
    start = time.perf_counter()
    method = resolve_quantization(
        quantization,
        is_gguf=bool(source.gguf_file),
        device=device,
        native=getattr(cls, "accepts_quantized_weights", False),
        load_format=load_format,
    )
    with torch.device("meta"):
        model = cls(hf_config)
        if method is not None:  # before materializing: no float copy of a quantized weight is allocated
            quantize_model(model, method, quantize_lm_head=quantize_lm_head)
    _materialize(model, dtype, device)
    model.eval()
    params = dict(model.named_parameters())
    if load_format == "dummy":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for param in params.values():
            # vLLM's dummy weights: small uniform values keep activations finite at any depth.
            param.data.copy_(torch.empty(param.shape, dtype=torch.float32).uniform_(-1e-3, 1e-3, generator=generator))
        if method is not None:
            fill_dummy(model, generator)
        source_desc = "dummy weights"
    else:
        keep = quant.supported_types() if method == "gguf" else ()
        # QuantizedWeights among the tensors: only layers with `accepts_quantized` keep them as they come
        weights = cast(
            Iterator[tuple[str, torch.Tensor]], iterate_weights(source, hf_config=hf_config, keep_quantized=keep)
        )
        base_model = is_base_model(hf_config)
        if base_model:  # the trunk alone: its tensor names lack the trunk's prefix, and there is no LM head
            weights = _prefixed(weights, getattr(model, "_trunk_names", ("model",))[0])
        with torch.no_grad():
            loaded = model.load_weights(weights)
        missing = sorted(set(params) - loaded - _tied_names(model) - ({"lm_head.weight"} if base_model else set()))
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
        source_desc = source.gguf_file or source.path
    if method is not None:
        check_loaded(model)
        source_desc += f"; quantized weights ({method}): {quantization_summary(model)}"
    num_params = sum(p.numel() for p in params.values()) + quantized_numel(model)
    size = model_weight_bytes(model)
    del params  # the CPU re-layout below replaces weights: let the originals go as it does
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        # a model may bring its own re-layout (the transformers fallback's linears see [batch, seq, features])
        getattr(model, "optimize_linears_for_cpu", lambda: optimize_linears_for_cpu(model))()
    shard = f", rank {get_tp_rank()}'s shard of {get_tp_size()}" if get_tp_size() > 1 else ""
    logger.info(
        "Loaded %s (%s, %.0fM parameters%s, %s, %s) in %.1f s; weights take %.2f GiB",
        source.name,
        type(model).__name__,
        num_params / 1e6,
        shard,
        str(dtype).removeprefix("torch."),
        source_desc,
        time.perf_counter() - start,
        size / 2**30,
    )
    return model


def _prefixed(weights: Iterable[tuple[str, torch.Tensor]], trunk: str) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        yield (name if name.startswith(f"{trunk}.") else f"{trunk}.{name}"), tensor


def _arch_name(hf_config: PretrainedConfig) -> str:
    return ", ".join(getattr(hf_config, "architectures", None) or []) or str(getattr(hf_config, "model_type", "?"))


def _tied_names(model: nn.Module) -> set[str]:
    """Names that alias another parameter (e.g. lm_head.weight tied to the embedding)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.setdefault(id(param), name)
    return tied
