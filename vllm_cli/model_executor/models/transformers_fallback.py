"""Any causal LM transformers implements, run on our flat batch and paged KV cache.

transformers' own model class is built for the config (on the meta device, so the loader
materializes it like a native model) with `attn_implementation="vllm_cli_paged"`: every
attention layer then calls `paged_attention_forward` below instead of SDPA/eager, and that
function hands the layer's q/k/v to our attention backend (write K/V by slot_mapping, read
each sequence's context through its block table). The flat batch of a step is one batch row
of T tokens with position_ids = our positions, no attention mask and no transformers cache,
so transformers builds no mask or cache of its own; rotary embeddings follow position_ids.

Weights load with transformers' names and its checkpoint conversions (renamings, and
converters such as the per-expert -> fused MoE tensors), tied weights stay tied.

Limits: decoder-only text models whose attention goes through transformers'
AttentionInterface (`_supports_attention_backend`), with standard causal attention over
one K/V per layer: no attention-logit softcapping, attention sinks, ALiBi/position-bias
masks, cross-layer KV sharing, recurrent/SSM state, encoder-decoder or multimodal inputs.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from vllm_cli.attention.backend import ForwardContext
from vllm_cli.logger import init_logger
from vllm_cli.model_executor.layers.cpu_linear import CpuLinear, log_cpu_linear_kinds, replace_linears
from vllm_cli.model_executor.models.base import CausalLM

if TYPE_CHECKING:  # annotations only: see _register_attention
    from transformers import PreTrainedModel

logger = init_logger(__name__)

ATTN_IMPLEMENTATION = "vllm_cli_paged"


@dataclass
class _Step:
    ctx: ForwardContext
    attention_layers: set[int] = field(default_factory=set)  # layers whose attention called ours


# The step, set by TransformersForCausalLM.forward for the duration of the transformers forward
# pass (a contextvar: the async engine steps on its own thread).
_STEP: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("vllm_cli_forward_step", default=None)
# Config attributes that change attention in ways our backend does not implement.
_UNSUPPORTED_CONFIG = {
    "attn_logit_softcapping": "attention-logit softcapping",
    "alibi": "ALiBi position biases",
    "use_alibi": "ALiBi position biases",
}


def paged_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: query [1, H, T, D], key/value [1, KVH, T, D]
    -> ([1, T, H, D], None), computed by the step's attention backend (AttentionBackend.forward,
    as the native models' Attention layer calls it) against the paged KV cache."""
    step = _STEP.get()
    if step is None:
        raise RuntimeError(f"attention {ATTN_IMPLEMENTATION!r} runs only inside TransformersForCausalLM.forward")
    for name in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"the transformers fallback does not support attention with {name!r} ({type(module).__name__})"
            )
    if not getattr(module, "is_causal", True):
        raise ValueError(f"the transformers fallback supports causal attention only ({type(module).__name__})")
    if query.shape[0] != 1:
        raise ValueError(f"the transformers fallback runs one flat batch row, got batch {query.shape[0]}")
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx: cannot map it onto a KV-cache layer")
    ctx = step.ctx
    k_cache, v_cache = ctx.kv_caches[layer_idx]
    if key.shape[1:2] + key.shape[3:] != k_cache.shape[1:] or value.shape[1:2] + value.shape[3:] != v_cache.shape[1:]:
        raise ValueError(
            f"{type(module).__name__} (layer {layer_idx}) has keys/values of {key.shape[1]} heads x "
            f"{key.shape[3]}/{value.shape[3]} dims, but the KV cache was sized from the config as "
            f"{k_cache.shape[1]} x {k_cache.shape[2]}: the transformers fallback cannot run this model"
        )
    step.attention_layers.add(layer_idx)
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)  # [T, KVH, D]
    v = value[0].transpose(0, 1)
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = ctx.backend.forward(
        q, k, v, k_cache, v_cache, ctx.attn_metadata, scale, sliding_window=int(window) if window else None
    )
    return out[None], None  # [1, T, H, D]: transformers reshapes it to [1, T, H * D]


def _register_attention() -> None:
    # transformers' modeling_utils (AttentionInterface, PreTrainedModel) imports triton when it is
    # installed: imported only once a fallback model is built, so importing this module neither
    # costs that nor initializes triton before TRITON_INTERPRET can be set.
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)


def _text_config(hf_config: Any) -> Any:
    get = getattr(hf_config, "get_text_config", None)
    return get() if get is not None else hf_config


def transformers_model_class(hf_config: Any) -> type[PreTrainedModel]:
    """transformers' causal-LM class for this config, or a ValueError saying why the fallback cannot run it."""
    if getattr(hf_config, "is_encoder_decoder", False):
        raise ValueError("encoder-decoder models are not supported")
    try:
        cls: type[PreTrainedModel] = MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]  # type: ignore[assignment]
    except KeyError:
        raise ValueError(
            f"transformers has no causal LM for model_type {getattr(hf_config, 'model_type', None)!r}"
        ) from None
    if not cls.is_backend_compatible():
        raise ValueError(
            f"transformers' {cls.__name__} does not route attention through AttentionInterface, "
            "so the paged KV cache cannot be plugged in"
        )
    text = _text_config(hf_config)
    for attr, what in _UNSUPPORTED_CONFIG.items():
        if getattr(text, attr, None):
            raise ValueError(f"{cls.__name__} with {what} ({attr}={getattr(text, attr)!r}) is not supported")
    return cls


class _NdCpuLinear(CpuLinear):
    """CpuLinear for transformers' [batch, seq, features] activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)


class _BaseOutput:
    """The base model's output as the head code reads it: last_hidden_state (also [0]); any
    other field (router_logits, cache, ...) is None."""

    def __init__(self, hidden: torch.Tensor | None):
        self.last_hidden_state = hidden

    def __getattr__(self, name: str) -> None:
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __getitem__(self, index: int) -> torch.Tensor | None:
        return (self.last_hidden_state,)[index]


class _HiddenPassthrough(nn.Module):
    """Stands in for the base model while compute_logits runs transformers' own head code
    (also for a nested one, as OPT's `self.model.decoder(...)`)."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> _BaseOutput:
        return _BaseOutput(inputs_embeds)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattr__(name)
        return self


class TransformersForCausalLM(CausalLM):
    """transformers' modeling code with our paged KV cache and scheduler plugged in."""

    supports_tensor_parallel = False  # transformers' layers hold whole weights
    accepts_quantized_weights = False  # its weights load through transformers' own conversion

    def __init__(self, config: Any):
        super().__init__(config)
        cls = transformers_model_class(config)
        _register_attention()
        hf_config = copy.deepcopy(config)  # the engine keeps its own config untouched
        hf_config._attn_implementation = ATTN_IMPLEMENTATION
        with torch.device("meta"):  # parameters are materialized and filled by the loader
            hf_model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=ATTN_IMPLEMENTATION)
        hf_model.eval()
        self._materialize_non_persistent_buffers(hf_model)
        self.hf_model = hf_model
        self._passthrough = [_HiddenPassthrough()]  # a list: not a submodule
        text = _text_config(hf_model.config)
        heads = text.num_attention_heads
        kv_heads = 1 if getattr(text, "multi_query", False) else getattr(text, "num_key_value_heads", None) or heads
        self._kv_shape = (
            int(text.num_hidden_layers),
            int(kv_heads),
            int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        )
        self._checked_attention = False
        logger.info("using the transformers fallback for %s", cls.__name__)

    @staticmethod
    def _materialize_non_persistent_buffers(hf_model: PreTrainedModel) -> None:
        """Real CPU values for the buffers no checkpoint holds (rotary inv_freq, embedding scales),
        computed by transformers' own _init_weights as from_pretrained does; persistent
        buffers become placeholders the checkpoint fills."""
        from transformers import PreTrainedModel  # lazily: see _register_attention

        owner: dict[int, PreTrainedModel] = {}
        for sub in hf_model.modules():  # pre-order: the innermost PreTrainedModel wins
            if isinstance(sub, PreTrainedModel):
                for m in sub.modules():
                    owner[id(m)] = sub
        with torch.device("cpu"):
            for module in hf_model.modules():
                meta = {n: b for n, b in module._buffers.items() if b is not None and b.is_meta}
                if not meta:
                    continue
                for n, b in meta.items():
                    fill = float("nan") if b.is_floating_point() else 0
                    module._buffers[n] = torch.full(b.shape, fill, dtype=b.dtype, device="cpu")
                owner[id(module)]._init_weights(module)  # parameters are still meta: their init is a no-op
                for n in meta:
                    filled = module._buffers[n]
                    if (
                        n in module._non_persistent_buffers_set
                        and filled is not None
                        and filled.is_floating_point()
                        and filled.isnan().any()
                    ):
                        raise ValueError(
                            f"the transformers fallback cannot compute buffer {n!r} of {type(module).__name__}"
                        )

    def kv_cache_shape(self) -> tuple[int, int, int]:
        return self._kv_shape

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hf = self.hf_model
        base = getattr(hf, hf.base_model_prefix)
        step = _Step(ctx)
        token = _STEP.set(step)
        try:
            out = base(input_ids=input_ids[None], position_ids=positions[None], attention_mask=None, use_cache=False)
        finally:
            _STEP.reset(token)
        if not self._checked_attention:
            if not step.attention_layers:
                raise RuntimeError(
                    f"{type(hf).__name__} did not call the {ATTN_IMPLEMENTATION!r} attention "
                    "function: the transformers fallback cannot run it"
                )
            self._checked_attention = True
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """transformers' own head on the selected rows: lm_head plus whatever the model's
        forward applies after it (logit scaling, final softcapping), with the base model
        replaced by a passthrough of these hidden states."""
        hf = self.hf_model
        prefix = hf.base_model_prefix
        base = hf._modules[prefix]
        hf._modules[prefix] = self._passthrough[0]
        try:
            logits = hf(inputs_embeds=hidden[None], use_cache=False).logits
        finally:
            hf._modules[prefix] = base
        return logits[0]

    def optimize_linears_for_cpu(self) -> None:
        """The loader's CPU re-layout, with linears that take [batch, seq, features]."""
        replace_linears(self, _NdCpuLinear)
        log_cpu_linear_kinds(self)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into transformers' parameters, renamed/converted as
        transformers' from_pretrained does (its conversion mapping for the model class)."""
        hf = self.hf_model
        mapping = get_model_conversion_mapping(hf)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        by_pattern = {p: c for c in converters for p in c.source_patterns}
        state = hf.state_dict(keep_vars=True)  # names -> live parameters/buffers
        aliases = _alias_names(hf)  # tied names -> the name they alias
        prefix = hf.base_model_prefix
        loaded: set[str] = set()
        unexpected: list[str] = []
        pending: dict[str, list[tuple[str, str, torch.Tensor]]] = {}  # converter target -> (source, pattern, tensor)

        def store(name: str, tensor: torch.Tensor) -> None:
            if name in aliases:  # a tied copy (e.g. lm_head.weight): the canonical tensor wins
                if aliases[name] in loaded:
                    return
                name = aliases[name]
            target = state[name]
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
                )
            target.data.copy_(tensor)
            loaded.add(name)

        for source, tensor in weights:
            name, pattern = rename_source_key(source, renamings, converters, prefix, state)
            if name not in state and source in state:
                name, pattern = source, None
            if name not in state:
                unexpected.append(source)
            elif pattern is None:
                store(name, tensor)
            else:
                pending.setdefault(name, []).append((source, pattern, tensor))
        for first_target, parts in pending.items():
            converter = copy.deepcopy(by_pattern[parts[0][1]])
            for source, pattern, tensor in sorted(parts, key=lambda p: dot_natural_key(p[0])):  # expert order
                # transformers calls the loader it is given (annotated as a Future)
                converter.add_tensor(first_target, source, pattern, lambda t=tensor: t)  # type: ignore[arg-type]
            for target, value in converter.convert(first_target, model=hf, config=hf.config).items():
                store(target, value[0] if isinstance(value, list) else value)
        if unexpected:
            logger.warning(
                "ignored %d checkpoint tensors %s has no place for, e.g. %s",
                len(unexpected),
                type(hf).__name__,
                ", ".join(unexpected[:3]),
            )
        loaded |= {alias for alias, canonical in aliases.items() if canonical in loaded}
        return {f"hf_model.{name}" for name in loaded}  # our names


def _alias_names(module: nn.Module) -> dict[str, str]:
    """Names of tied parameters -> the first name of the same tensor."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        first.setdefault(id(param), name)
    return aliases
