"""What every model implementation provides to the model runner, and shared weight loading."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vllm_cli.model_executor.layers.linear import gather_logits


@dataclass
class ForwardContext:
    """Per-step state every layer reads: the attention backend, its metadata and the caches."""

    backend: Any
    attn_metadata: Any
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    extras: dict = field(default_factory=dict)
    rotary: Any = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


class CausalLM(nn.Module):
    """Base class: forward(input_ids, positions, ctx) -> final hidden states [T, H];
    compute_logits(hidden) -> [N, vocab]; load_weights(named tensors) -> names loaded."""

    stacked_params: dict[str, tuple[str, Any]] = {}

    def __init__(self, config):
        super().__init__()
        self.config = config

    def kv_cache_shape(self) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim)."""
        raise NotImplementedError

    def run_decoder(self, embed: nn.Module, layers: nn.ModuleList, final_norm: nn.Module, input_ids: torch.Tensor,
                    positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The common body of forward(): embed, every layer, final norm. A model with a
        `rotary` looks its cos/sin up once per step here, for every layer to share."""
        rotary = getattr(self, "rotary", None)
        if rotary is not None:
            ctx.rotary = rotary
            ctx.cos, ctx.sin = rotary.cos_sin(positions, embed.weight.dtype)
        hidden = embed(input_ids)
        for layer in layers:
            hidden = layer(hidden, ctx)
        return final_norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, vocab] logits; under tensor parallelism every rank computes its vocabulary shard and
        all of them take part in the gather."""
        return gather_logits(self.lm_head(hidden), self.config.vocab_size)

    def load_stacked_weights(self, weights: Iterable[tuple[str, torch.Tensor]], skip: tuple[str, ...] = ()) -> set[str]:
        """Copy checkpoint tensors into parameters, mapping split projections onto fused ones.
        A layer with load_weight (the tensor-parallel layers) takes its own slice of the tensor
        and its place in a fused parameter; anything else is replicated whole."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if any(s in name for s in skip):
                continue
            if name == "lm_head.weight" and getattr(self, "tie_word_embeddings", False):
                continue
            shard_id = None
            for fragment, (fused, sid) in self.stacked_params.items():
                if fragment in name:
                    name, shard_id = name.replace(fragment, fused), sid
                    break
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no counterpart in {type(self).__name__}")
            module_name, _, param_name = name.rpartition(".")
            module = self.get_submodule(module_name)
            if hasattr(module, "load_weight"):
                module.load_weight(param_name, tensor, shard_id)
            else:
                target = params[name].data
                if shard_id is not None or tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(target.shape)}")
                target.copy_(tensor)
            loaded.add(name)
        return loaded
