"""What every model implementation provides to the model runner (CausalLM), the decoder trunk
the native models share (DecoderForCausalLM), and shared weight loading."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vllm_cli.attention.backend import ForwardContext
from vllm_cli.attention.layer import Attention
from vllm_cli.model_executor.layers.linear import ParallelLMHead, ShardId, gather_logits
from vllm_cli.model_executor.layers.quantization import QuantizedWeight
from vllm_cli.model_executor.layers.rotary import RotaryEmbedding


class CausalLM(nn.Module):
    """Base class: forward(input_ids, positions, ctx) -> final hidden states [T, H];
    compute_logits(hidden) -> [N, vocab]; load_weights(named tensors) -> names loaded."""

    # checkpoint name fragment -> (fused parameter fragment, shard id)
    stacked_params: dict[str, tuple[str, ShardId]] = {}
    tie_word_embeddings = False
    # Whether load_weights passes GGUF tensors on as they come (QuantizedWeight: rows of blocks);
    # False where it reshapes checkpoint tensors itself (they then arrive dequantized).
    accepts_quantized_weights = True
    lm_head: nn.Module

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def kv_cache_shape(self) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim)."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        raise NotImplementedError

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
        for checkpoint_name, tensor in weights:
            if any(s in checkpoint_name for s in skip):
                continue
            if checkpoint_name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            name = checkpoint_name
            shard_id: ShardId = None
            for fragment, (fused, sid) in self.stacked_params.items():
                if fragment in name:
                    name, shard_id = name.replace(fragment, fused), sid
                    break
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no counterpart in {type(self).__name__}")
            module_name, _, param_name = name.rpartition(".")
            module = self.get_submodule(module_name)
            if isinstance(tensor, QuantizedWeight) and not getattr(module, "accepts_quantized", False):
                tensor = tensor.dequantize()  # a layer without a quantized form (e.g. a norm)
            load_weight = getattr(module, "load_weight", None)
            if load_weight is not None:
                try:  # the layer checks the whole tensor before taking its slice; the name is known here
                    load_weight(param_name, tensor, shard_id)
                except ValueError as e:
                    raise ValueError(f"checkpoint tensor {checkpoint_name!r}: {e}") from None
            else:
                target = params[name].data
                if shard_id is not None or tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
                    )
                target.copy_(tensor)
            loaded.add(name)
        return loaded


class DecoderForCausalLM(CausalLM):
    """The trunk every native model shares: token embedding -> decoder layers -> final norm -> LM head.

    A model hands its trunk's modules over under its checkpoint's names, in checkpoint order:
    `trunk` is the container's name (e.g. "model", "transformer") and `modules` its children,
    the token embedding first, the decoder layers (a list) somewhere after it, the final norm
    last (anything else, such as GPT-2's position embedding, stays where it is put). Each
    decoder layer is called as layer(hidden, ctx); its attention subclasses `Attention`. Per
    step, the rotary cos/sin or the ALiBi slopes (in the model's dtype) are looked up once and
    shared through the ForwardContext by every layer.
    """

    rotary: RotaryEmbedding | None
    alibi_slopes: torch.Tensor | None

    def __init__(
        self,
        config: Any,
        trunk: str,
        modules: Mapping[str, nn.Module | Sequence[nn.Module]],
        *,
        tie_word_embeddings: bool,
        rotary: RotaryEmbedding | None = None,
        alibi_slopes: torch.Tensor | None = None,
    ):
        super().__init__(config)
        names = list(modules)
        layers = next(n for n, m in modules.items() if not isinstance(m, nn.Module))
        self._trunk_names = (trunk, names[0], layers, names[-1])
        container = nn.Module()
        for name, module in modules.items():
            setattr(container, name, module if isinstance(module, nn.Module) else nn.ModuleList(module))
        setattr(self, trunk, container)
        self.rotary = rotary
        self.tie_word_embeddings = tie_word_embeddings
        embedding = self.embedding
        self.lm_head = ParallelLMHead(embedding.embedding_dim, config.vocab_size)
        if tie_word_embeddings:
            self.lm_head.weight = embedding.weight
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)

    @property
    def embedding(self) -> nn.Embedding:
        trunk, embedding, _, _ = self._trunk_names
        return getattr(getattr(self, trunk), embedding)

    @property
    def layers(self) -> nn.ModuleList:
        trunk, _, layers, _ = self._trunk_names
        return getattr(getattr(self, trunk), layers)

    def kv_cache_shape(self) -> tuple[int, int, int]:
        attention = [m for m in self.layers.modules() if isinstance(m, Attention)]
        return len(attention), attention[0].num_kv_heads, attention[0].head_dim

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The first hidden states: the token embeddings (GPT-2 adds its position embeddings)."""
        return self.embedding(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        trunk_name, embedding, layers, norm = self._trunk_names
        trunk = getattr(self, trunk_name)
        dtype = getattr(trunk, embedding).weight.dtype
        rotary = self.rotary
        if rotary is not None:
            ctx.rotary = rotary
            ctx.cos, ctx.sin = rotary.cos_sin(positions, dtype)
        if self.alibi_slopes is not None:  # one tensor for every layer: the backend builds the bias mask once
            ctx.alibi_slopes = self.alibi_slopes.to(dtype)
        hidden = self.embed(input_ids, positions)
        return getattr(trunk, norm)(self.run_layers(getattr(trunk, layers), hidden, ctx))

    def run_layers(self, layers: nn.ModuleList, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The decoder layers in turn (a model whose layers carry a residual stream overrides it)."""
        for layer in layers:
            hidden = layer(hidden, ctx)
        return hidden
