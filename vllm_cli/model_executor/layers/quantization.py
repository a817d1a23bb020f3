"""Weight-only quantized layers (--quantization): GGUF checkpoints kept in their own block formats,
or float checkpoints packed into Q8_0 (int8) / Q4_1 (int4) groups of 32 at load; the matmuls run on
the C kernels of kernels/quant.py with float32 activations.

Every tensor-parallel linear of layers/linear.py (column, merged, QKV, row, LM head) and the
vocabulary embedding has a quantized counterpart here, swapped in on the meta device before the
weights are materialized (`quantize_model`, through cpu_linear.replace_linears), so no float copy
of a quantized weight is ever allocated. A layer holds one `QuantizedPart` per checkpoint tensor it
is loaded from (q/k/v, gate/up): GGUF files mix types per tensor (Q4_K_M has Q4_K and Q6_K ones),
so each part keeps its own type and writes its own slice of the output. A part may also be float:
a tensor stored as F16/F32, of a type the kernels lack, or a tensor-parallel row split that does not
fall on block boundaries (dequantized at load, with a log line).

Under tensor parallelism the column split cuts rows, which stay quantized; the row split cuts
columns, which stay quantized when every rank's share is whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vllm_cli.config import QUANTIZATION_METHODS
from vllm_cli.distributed.parallel_state import all_reduce, get_tp_rank, get_tp_size, padded_shard
from vllm_cli.kernels import decode_loop, quant
from vllm_cli.logger import init_logger
from vllm_cli.model_executor.layers.kernel_parts import KernelPart
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ParallelLinearBase,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    ShardId,
    VocabParallelEmbedding,
)

logger = init_logger(__name__)


@dataclass
class QuantizedWeight:
    """A checkpoint tensor still in its GGUF blocks: data is uint8 [rows, row bytes]; shape is the
    float tensor's [rows, columns]. Slices by rows always and by columns on block boundaries."""

    data: torch.Tensor
    qtype: str
    shape: torch.Size
    name: str = ""

    def narrow(self, dim: int, start: int, length: int) -> QuantizedWeight | torch.Tensor:
        if dim == 0:
            return QuantizedWeight(self.data.narrow(0, start, length), self.qtype, torch.Size((length, self.shape[1])))
        qt = quant.quant_type(self.qtype)
        if start % qt.block_elems or length % qt.block_elems:
            logger.info(
                "Dequantizing %s at load: this rank's columns %d:%d do not fall on %s's %d-weight blocks",
                self.name or "a weight",
                start,
                start + length,
                self.qtype,
                qt.block_elems,
            )
            return self.dequantize().narrow(1, start, length)
        first, count = start // qt.block_elems * qt.block_bytes, length // qt.block_elems * qt.block_bytes
        return QuantizedWeight(self.data.narrow(1, first, count), self.qtype, torch.Size((self.shape[0], length)))

    def split(self, sizes: list[int]) -> list[QuantizedWeight | torch.Tensor]:
        pieces, start = [], 0
        for size in sizes:
            pieces.append(self.narrow(0, start, size))
            start += size
        return pieces

    def dequantize(self) -> torch.Tensor:
        return quant.dequantize(self.data.contiguous(), self.qtype, self.shape)


CheckpointTensor = torch.Tensor | QuantizedWeight


def dequantized(tensor: CheckpointTensor) -> torch.Tensor:
    return tensor.dequantize() if isinstance(tensor, QuantizedWeight) else tensor


class QuantizedPart(nn.Module):
    """Rows of a layer's weight loaded from one checkpoint tensor: GGUF blocks (buffer `qweight`,
    type `qtype`) or a float tensor (buffer `fweight`, in the model's dtype)."""

    qweight: torch.Tensor
    fweight: torch.Tensor

    def __init__(self, tensor: CheckpointTensor, dtype: torch.dtype, quantize_to: str | None = None):
        super().__init__()
        self.rows, self.in_features = int(tensor.shape[0]), int(tensor.shape[1])
        self.qtype: str | None = None
        if isinstance(tensor, QuantizedWeight):
            self.qtype = tensor.qtype
            self.register_buffer("qweight", tensor.data.contiguous(), persistent=False)
        elif quantize_to is not None and self.in_features % quant.quant_type(quantize_to).block_elems == 0:
            self.qtype = quantize_to
            self.register_buffer("qweight", quant.quantize(tensor, quantize_to), persistent=False)
        else:
            self.register_buffer("fweight", tensor.detach().to(dtype).contiguous(), persistent=False)

    def matmul(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x float32 [m, in_features] -> float32 [m, rows] (into `out` when given: contiguous)."""
        if self.qtype is not None:
            return quant.quantized_matmul(x, self.qweight, self.qtype, self.rows, self.in_features, out=out)
        y = F.linear(x.to(self.fweight.dtype), self.fweight).float()
        if out is not None:
            out.copy_(y)
        return y

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The float32 rows `ids` (an embedding lookup): only those rows are dequantized."""
        if self.qtype is None:
            return F.embedding(ids, self.fweight).float()
        flat = ids.reshape(-1)
        rows = self.qweight.index_select(0, flat)
        return quant.dequantize(rows, self.qtype, (flat.numel(), self.in_features)).view(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, in_features={self.in_features}, type={self.qtype or self.fweight.dtype}"


def _placeholder() -> nn.Parameter:
    """The `weight` a quantized layer shows its model: empty, in the model's dtype once materialized
    (the trunk reads the embedding's dtype from it; the loader finds the checkpoint name in it)."""
    return nn.Parameter(torch.empty(0), requires_grad=False)


def _check_shape(tensor: CheckpointTensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"checkpoint tensor {what!r} has shape {tuple(tensor.shape)}, expected {expected}")


class QuantizedLinear(nn.Module):
    """The quantized counterpart of one layers/linear.py linear (or a plain nn.Linear): the same
    output layout and tensor-parallel slices, its rows held as QuantizedParts."""

    accepts_quantized = True  # CausalLM.load_stacked_weights hands it QuantizedWeights as they are

    def __init__(self, linear: nn.Linear, quantize_to: str | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.quantize_to = quantize_to
        # the float layer, left on the meta device: its layout (sizes, heads, shards) and its kind;
        # in a tuple so that it is not registered as a submodule (its weight is never materialized)
        self._source = (linear,)
        self.reduce_output = bool(getattr(linear, "reduce_output", False)) and get_tp_size() > 1
        self.weight = _placeholder()
        self.bias = linear.bias
        self.parts = nn.ModuleDict()  # str(output offset) -> QuantizedPart
        self._plan: list[tuple[int, QuantizedPart]] | None = None
        if isinstance(linear, ParallelLMHead):  # the padding rows of the last shard have no part
            start, end, _ = padded_shard(linear.vocab_size)
            self.expected_rows = end - start
        else:
            self.expected_rows = self.out_features

    @property
    def source(self) -> nn.Linear:
        return self._source[0]

    def tie_to(self, embedding: QuantizedEmbedding) -> None:
        """Share the embedding's rows (a tied LM head: the same padded vocabulary shard)."""
        self.weight = embedding.weight
        self.parts = embedding.parts

    # --------------------------------------------------------------------------- loading

    def _pieces(self, param: str, tensor: CheckpointTensor, shard_id: ShardId) -> list[tuple[int, CheckpointTensor]]:
        """(offset in this rank's output, this rank's slice) of a checkpoint tensor, as the float
        layer's load_weight slices it."""
        layer, rank, tp = self.source, get_tp_rank(), get_tp_size()
        cols = () if param == "bias" else (self.in_features * (tp if isinstance(layer, RowParallelLinear) else 1),)
        if isinstance(layer, QKVParallelLinear):
            hd = layer.head_dim
            full_q, full_kv = layer.full_num_heads * hd, layer.full_num_kv_heads * hd
            if shard_id is None:
                _check_shape(tensor, (full_q + 2 * full_kv, *cols), param)
                pieces = dict(zip("qkv", _split(tensor, [full_q, full_kv, full_kv])))
            else:
                _check_shape(tensor, (full_q if shard_id == "q" else full_kv, *cols), f"{param} ({shard_id})")
                pieces = {str(shard_id): tensor}
            layout = {
                "q": (0, rank * layer.q_size, layer.q_size),
                "k": (layer.q_size, layer.first_kv_head * hd, layer.kv_size),
                "v": (layer.q_size + layer.kv_size, layer.first_kv_head * hd, layer.kv_size),
            }
            return [
                (layout[name][0], piece.narrow(0, layout[name][1], layout[name][2])) for name, piece in pieces.items()
            ]
        if isinstance(layer, MergedColumnParallelLinear):
            if shard_id is None:
                _check_shape(tensor, (sum(layer.full_sizes), *cols), param)
            else:
                _check_shape(tensor, (layer.full_sizes[int(shard_id)], *cols), f"{param} ({shard_id})")
            split = _split(tensor, layer.full_sizes) if shard_id is None else None
            result, offset = [], 0
            for index, local in enumerate(layer.local_sizes):
                if shard_id is None or shard_id == index:
                    piece = split[index] if split is not None else tensor
                    result.append((offset, piece.narrow(0, rank * local, local)))
                offset += local
            return result
        if isinstance(layer, ParallelLMHead):
            _check_shape(tensor, (layer.vocab_size, *cols), param)
            start, end, _ = padded_shard(layer.vocab_size)
            return [(0, tensor.narrow(0, start, end - start))]
        if isinstance(layer, RowParallelLinear):
            if param == "bias":  # added once, after the all-reduce: every rank keeps all of it
                _check_shape(tensor, (self.out_features,), param)
                return [(0, tensor)]
            _check_shape(tensor, (self.out_features, *cols), param)
            return [(0, tensor.narrow(1, rank * self.in_features, self.in_features))]
        if isinstance(layer, ColumnParallelLinear):
            _check_shape(tensor, (self.out_features * tp, *cols), param)
            return [(0, tensor.narrow(0, rank * self.out_features, self.out_features))]
        _check_shape(tensor, (self.out_features, *cols), param)  # a plain nn.Linear
        return [(0, tensor)]

    def load_weight(self, param_name: str, tensor: CheckpointTensor, shard_id: ShardId = None) -> None:
        for offset, piece in self._pieces(param_name, tensor, shard_id):
            if param_name == "bias":
                assert self.bias is not None
                self.bias.data.narrow(0, offset, piece.shape[0]).copy_(dequantized(piece))
            else:
                self.parts[str(offset)] = QuantizedPart(piece, self.weight.dtype, self.quantize_to)

    # --------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        if self._plan is None:  # built once, after loading
            self._plan = part_list(self.parts)
        parts = self._plan
        if len(parts) == 1 and parts[0][1].rows == self.out_features:
            y = parts[0][1].matmul(x2)
        else:  # fused (QKV, gate/up) or a padded vocabulary shard: each part writes its slice
            y = torch.empty((x2.shape[0], self.out_features), dtype=torch.float32)
            covered = 0
            for start, part in parts:
                target = y[:, start : start + part.rows]
                if target.is_contiguous():  # one row of x (decode): written in place
                    part.matmul(x2, out=target)
                else:
                    target.copy_(part.matmul(x2))
                covered += part.rows
            if covered < self.out_features:  # the LM head's padding rows: logits cut off later
                y[:, covered:] = 0
        out = y.to(x.dtype)
        if self.reduce_output:
            out = all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*lead, self.out_features)

    def kernel_parts(self) -> list[KernelPart] | None:
        """The C kernels this layer's output is made of (layers/kernel_parts.py): each quantized part
        through its type's `gguf_matmul_<type>`, each float part through decode_loop.c's row-major
        matmul; None when a part has no kernel or the output is reduced over ranks (the bias, if
        any, is the caller's: `self.bias`)."""
        if self.reduce_output:
            return None
        result = []
        for start, part in part_list(self.parts):
            if part.qtype is not None:
                fn, weight = quant.matmul_address(part.qtype), part.qweight
            else:
                fn, weight = decode_loop.float_matmul_address(part.fweight.dtype), part.fweight
            if fn is None:
                return None
            result.append(KernelPart(fn, weight, part.rows, part.in_features, start))
        if sum(p.rows for p in result) != self.out_features:  # e.g. the LM head's padding rows
            return None
        return result

    def extra_repr(self) -> str:
        kind = type(self.source).__name__
        return f"in_features={self.in_features}, out_features={self.out_features}, from={kind}"


def part_list(parts: nn.ModuleDict) -> list[tuple[int, QuantizedPart]]:
    """(output offset, part) of a layer's parts, by offset."""
    return sorted(((int(offset), cast(QuantizedPart, part)) for offset, part in parts.items()), key=lambda p: p[0])


def _split(tensor: CheckpointTensor, sizes: list[int]) -> list[CheckpointTensor]:
    if isinstance(tensor, QuantizedWeight):
        return tensor.split(sizes)
    return list(tensor.split(sizes))


class QuantizedEmbedding(nn.Module):
    """VocabParallelEmbedding on quantized rows: only the looked-up rows are dequantized."""

    accepts_quantized = True

    def __init__(self, embedding: VocabParallelEmbedding, quantize_to: str | None = None):
        super().__init__()
        self.quantize_to = quantize_to  # float rows packed into this GGUF type at load (None: kept as they come)
        self.vocab_size, self.embedding_dim = embedding.vocab_size, embedding.embedding_dim
        self.vocab_start, self.vocab_end = embedding.vocab_start, embedding.vocab_end
        self.num_embeddings = embedding.num_embeddings
        self.weight = _placeholder()
        self.parts = nn.ModuleDict()  # {"0": the rows of this rank's vocabulary shard}
        self.expected_rows = self.vocab_end - self.vocab_start

    def load_weight(self, param_name: str, tensor: CheckpointTensor, shard_id: ShardId = None) -> None:
        _check_shape(tensor, (self.vocab_size, self.embedding_dim), param_name)
        rows = tensor.narrow(0, self.vocab_start, self.vocab_end - self.vocab_start)
        self.parts["0"] = QuantizedPart(rows, self.weight.dtype, self.quantize_to)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        part = part_list(self.parts)[0][1]
        if get_tp_size() == 1:
            return part.lookup(input_ids).to(self.weight.dtype)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = torch.where(mine, input_ids - self.vocab_start, 0)
        rows = part.lookup(local_ids).to(self.weight.dtype)
        return all_reduce(rows * mine.unsqueeze(-1).to(rows.dtype))


def resolve_quantization(
    requested: str, *, is_gguf: bool, device: torch.device, native: bool, load_format: str = "auto"
) -> str | None:
    """--quantization -> the method quantize_model applies ("gguf", "int8", "int4"), or None for
    float weights. ValueError for a combination that cannot run."""
    if requested not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_METHODS)}, got {requested!r}")
    if requested == "none" or (requested == "auto" and not is_gguf):
        return None
    if requested == "gguf" and not is_gguf:
        raise ValueError("--quantization gguf needs a .gguf model file")
    if requested in quant.QUANTIZE_FORMATS and is_gguf:
        raise ValueError(
            f"--quantization {requested} packs a float checkpoint; a .gguf file is quantized already "
            "(keep its own types with the default, or dequantize it with --quantization none)"
        )
    why_not = None
    if device.type != "cpu":
        why_not = "the quantized matmuls run on the CPU only"
    elif not native:
        why_not = "the model runs through the transformers fallback, which loads float weights"
    elif not quant.supported_types():
        why_not = "the CPU kernels are not built"
    elif load_format == "dummy" and is_gguf:
        why_not = "dummy weights are float"
    if why_not is None:
        return "gguf" if is_gguf else requested
    if requested == "auto":
        logger.info("GGUF weights dequantized at load: %s", why_not)
        return None
    raise ValueError(f"--quantization {requested} is not available here: {why_not}")


def quantize_model(model: nn.Module, method: str, quantize_lm_head: bool = False) -> None:
    """Swap the model's linears (and for GGUF its embedding and LM head) for their quantized
    counterparts, on the meta device before the weights are materialized. method: "gguf" (the
    checkpoint's blocks are kept as they come; float tensors stay float), "int8" or "int4" (float
    tensors packed at load into Q8_0 / Q4_1; embedding and LM head stay float, as vLLM's weight-only
    methods leave them, unless quantize_lm_head: then the LM head is packed too, into Q8_0 whatever the
    linears' format (the logits are the model's output: llama.cpp's Q4 files keep theirs at 6-8 bits too),
    and an embedding tied to it with it, one copy of blocks)."""
    from vllm_cli.model_executor.layers.cpu_linear import replace_linears

    quantize_to = quant.QUANTIZE_FORMATS.get(method)
    lm_head_to = quant.QUANTIZE_FORMATS["int8"] if quantize_lm_head and quantize_to is not None else None

    def make(linear: nn.Linear) -> nn.Module:
        known = (type(linear) is nn.Linear) or type(linear) in _LINEAR_KINDS
        if not known:
            return linear
        if quantize_to is not None and isinstance(linear, ParallelLMHead):
            return linear if lm_head_to is None else QuantizedLinear(linear, lm_head_to)
        return QuantizedLinear(linear, quantize_to)

    tied = getattr(model, "tie_word_embeddings", False)
    replace_linears(model, make)
    if quantize_to is not None and (lm_head_to is None or not tied):
        return  # the embedding stays float (an untied one reads a row per token)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is VocabParallelEmbedding:
                setattr(module, name, QuantizedEmbedding(child, lm_head_to))
    embedding, lm_head = getattr(model, "embedding", None), getattr(model, "lm_head", None)
    if tied and isinstance(lm_head, QuantizedLinear):
        if isinstance(embedding, QuantizedEmbedding):
            lm_head.tie_to(embedding)


_LINEAR_KINDS = (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    ParallelLMHead,
    ParallelLinearBase,
)


def check_loaded(model: nn.Module) -> None:
    """Every quantized layer received all of its rows (a fused layer: one part per shard)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear | QuantizedEmbedding):
            rows = sum(part.rows for _, part in part_list(module.parts))
            if rows != module.expected_rows:
                raise ValueError(f"checkpoint left {name} incomplete: {rows} of its {module.expected_rows} rows loaded")


def fill_dummy(model: nn.Module, generator: torch.Generator) -> None:
    """--load-format dummy: random weights for the quantized linears too, packed as a checkpoint's would be."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            weight = torch.empty(module.expected_rows, module.in_features).uniform_(-1e-3, 1e-3, generator=generator)
            module.parts["0"] = QuantizedPart(weight, module.weight.dtype, module.quantize_to)


def quantized_numel(model: nn.Module) -> int:
    """Weights held by the quantized layers' parts (each once)."""
    parts = {id(m): m for m in model.modules() if isinstance(m, QuantizedPart)}
    return sum(part.rows * part.in_features for part in parts.values())


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds, shared ones once: quantized blocks
    included, and the CPU linears' prepacked weights (which live outside the parameters)."""
    from vllm_cli.model_executor.layers.cpu_linear import CpuLinear

    tensors = [*model.parameters(), *model.buffers()]
    tensors += [m.packed for m in model.modules() if isinstance(m, CpuLinear)]
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if tensor.device.type == "meta" or tensor.is_mkldnn:
            total += 0 if tensor.device.type == "meta" else tensor.numel() * tensor.element_size()
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def quantization_summary(model: nn.Module) -> str:
    """E.g. "210 q4_1, 1 q8_0, 2 float": the parts of the quantized layers by type."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantizedPart) and id(module) not in seen:
            seen.add(id(module))
            key = module.qtype or "float"
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
