"""The Llama family's decode fast path: a step where every sequence has one new token
(CpuDecodeMetadata) runs all decoder layers in one C call (kernels/decode_loop.py), in place of
`LlamaForCausalLM.run_layers`' Python loop, with the same kernels in the same order in float32.

Taken only where the C loop computes exactly what the torch path does: plain Llama layers
(LlamaDecoderLayer, LlamaAttention, LlamaMLP, RMSNorm; rotary, no ALiBi; Qwen3's q/k norms and the
like keep the torch path), one rank, the KV caches on the CPU in float32 or bfloat16, and every
linear answering `kernel_parts()` (layers/kernel_parts.py) with at most decode_loop.MAX_PARTS parts.
Anything else: `build_decode_loop` says why not, and the model keeps its torch path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vllm_cli.distributed.parallel_state import get_tp_size
from vllm_cli.kernels import decode_loop
from vllm_cli.model_executor.layers.norm import RMSNorm

if TYPE_CHECKING:
    from vllm_cli.attention.backend import ForwardContext
    from vllm_cli.attention.cpu_backend import CpuDecodeMetadata
    from vllm_cli.model_executor.models.llama import LlamaForCausalLM


def linear_descriptor(linear: nn.Module) -> decode_loop.LinearDescriptor | None:
    """A linear's kernel parts for the loop (its bias as a float32 copy), or None when it has none."""
    kernel_parts = getattr(linear, "kernel_parts", None)
    if kernel_parts is None or getattr(linear, "reduce_output", False):
        return None
    parts = kernel_parts()
    out_features, in_features = int(getattr(linear, "out_features", 0)), int(getattr(linear, "in_features", 0))
    if not parts or len(parts) > decode_loop.MAX_PARTS:
        return None
    if sum(p.rows for p in parts) != out_features or any(p.in_features != in_features for p in parts):
        return None
    bias = getattr(linear, "bias", None)
    return decode_loop.LinearDescriptor(
        [(p.fn, p.weight_address, p.rows, p.in_features, p.offset) for p in parts],
        out_features,
        None if bias is None else bias.detach().to(torch.float32).contiguous(),
    )


def build_decode_loop(
    model: LlamaForCausalLM, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[decode_loop.DecodeLoop | None, str]:
    """The C loop for this model and KV pool, or None and the reason it cannot run."""
    from vllm_cli.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP

    if not decode_loop.enabled():
        return None, f"{decode_loop.DECODE_LOOP_ENV}=0 or the CPU kernels are off"
    if get_tp_size() != 1:
        return None, "tensor parallelism"
    if type(model).run_layers is not LlamaForCausalLM.run_layers:
        return None, f"{type(model).__name__} runs its layers its own way"
    rotary = model.rotary
    if rotary is None or model.alibi_slopes is not None:
        return None, "no rotary embedding"
    layers = list(model.layers)
    if not layers or len(kv_caches) != len(layers):
        return None, "no layers or no KV cache per layer"
    dtype = model.embedding.weight.dtype
    first = layers[0]
    if not isinstance(first, LlamaDecoderLayer) or not isinstance(first.self_attn, LlamaAttention):
        return None, "not Llama layers"
    attn, eps = first.self_attn, first.input_layernorm.eps
    if dtype not in (torch.float32, torch.bfloat16) or rotary.rotary_dim % 2 or rotary.rotary_dim > attn.head_dim:
        return None, f"{dtype} / rotary dims {rotary.rotary_dim}"
    descriptors = []
    for layer, (k_cache, v_cache) in zip(layers, kv_caches):
        if type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention:
            return None, f"a layer of kind {type(layer).__name__} / {type(layer.self_attn).__name__}"
        if type(layer.mlp) is not LlamaMLP:
            return None, f"an MLP of kind {type(layer.mlp).__name__}"
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(n) is not RMSNorm or n.eps != eps for n in norms):
            return None, "norms of another kind or epsilon"
        a = layer.self_attn
        if (a.num_heads, a.num_kv_heads, a.head_dim, a.scale) != (
            attn.num_heads,
            attn.num_kv_heads,
            attn.head_dim,
            attn.scale,
        ):
            return None, "layers of different shapes"
        for cache in (k_cache, v_cache):
            if cache.dtype != dtype or cache.device.type != "cpu" or not cache.is_contiguous():
                return None, f"a KV cache in {cache.dtype} on {cache.device}"
        linears = [linear_descriptor(m) for m in (a.qkv_proj, a.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)]
        if any(d is None for d in linears):
            return None, "a linear without kernel_parts()"
        qkv, o, gate_up, down = linears
        assert qkv is not None and o is not None and gate_up is not None and down is not None
        descriptors.append(
            decode_loop.LayerDescriptor(
                input_norm=layer.input_layernorm.weight.detach().to(torch.float32).contiguous(),
                post_norm=layer.post_attention_layernorm.weight.detach().to(torch.float32).contiguous(),
                k_cache=k_cache,
                v_cache=v_cache,
                sliding_window=a.sliding_window or 0,
                qkv=qkv,
                o=o,
                gate_up=gate_up,
                down=down,
            )
        )
    hidden_size = int(model.embedding.embedding_dim)
    intermediate = descriptors[0].down.parts[0][3]
    for d in descriptors:
        shapes = (d.qkv.out_features, d.o.out_features, d.gate_up.out_features, d.down.out_features)
        if shapes != (
            (attn.num_heads + 2 * attn.num_kv_heads) * attn.head_dim,
            hidden_size,
            2 * intermediate,
            hidden_size,
        ):
            return None, f"linear shapes {shapes}"
    loop = decode_loop.DecodeLoop(
        descriptors,
        hidden_size=hidden_size,
        num_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        rotary_dim=rotary.rotary_dim,
        intermediate_size=intermediate,
        eps=eps,
        scale=attn.scale,
    )
    return loop, ""


def run_decode_loop(
    loop: decode_loop.DecodeLoop, hidden: torch.Tensor, ctx: ForwardContext, meta: CpuDecodeMetadata
) -> torch.Tensor:
    """run_layers' result for a decode step, by the C loop (float32 inside; back to hidden's dtype)."""
    dtype = hidden.dtype
    h = hidden if dtype == torch.float32 and hidden.is_contiguous() else hidden.to(torch.float32).contiguous()
    loop.run(h, ctx.cos, ctx.sin, meta.slot_mapping, meta.block_tables, meta.context_lens, meta.block_size)
    return h if dtype == torch.float32 else h.to(dtype)
