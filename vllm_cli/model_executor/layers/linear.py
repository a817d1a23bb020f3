"""Megatron-style tensor-parallel layers: each rank holds a shard of the weight and loads only
its slice of each checkpoint tensor.

- ColumnParallelLinear: output features split; no communication (its output feeds a
  row-parallel layer or per-head attention on this rank's heads).
- QKVParallelLinear: the fused q/k/v projection, split by heads; KV heads are split when there
  are at least as many as ranks, else replicated.
- MergedColumnParallelLinear: fused projections side by side ([gate; up]), each split.
- RowParallelLinear: input features split; partial outputs all-reduced, then the bias once.
- VocabParallelEmbedding / ParallelLMHead: the vocabulary split in padded equal shards; the
  embedding sums the ranks' masked lookups, the LM head gathers its logits (gather_logits).

In a world of one each is exactly nn.Linear / nn.Embedding (same parameters, same forward), so
the single-process engine is unchanged. Every layer has load_weight(param_name, tensor,
shard_id), which CausalLM.load_stacked_weights calls with the checkpoint's full tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vllm_cli.distributed.parallel_state import (
    all_gather_last_dim,
    all_reduce,
    divide,
    get_tp_rank,
    get_tp_size,
    kv_head_shard,
    padded_shard,
)

# Which part of a fused parameter a checkpoint tensor fills: "q"/"k"/"v" (QKVParallelLinear), the
# index of a merged projection (MergedColumnParallelLinear), or None for the whole parameter.
ShardId = str | int | None


def _check_shape(tensor: torch.Tensor, expected: tuple[int, ...], what: str, detail: str = "") -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(tensor.shape)}, expected {expected}{detail}")


def _copy_checked(
    target: torch.Tensor,
    tensor: torch.Tensor,
    what: str,
    shard_dim: int | None = None,
    start: int | None = None,
    full: int | None = None,
) -> None:
    """Copy a checkpoint tensor, or this rank's slice of it along shard_dim, into target, after
    checking the WHOLE tensor (narrowing first would cut a too-large tensor to size without a word).
    Along shard_dim the tensor holds `full` entries (default tp_size x target's: an even split) and
    this rank's slice starts at `start` (default rank x target's); every other dim matches target."""
    if shard_dim is None:
        _check_shape(tensor, tuple(target.shape), what)
        target.copy_(tensor)
        return
    local, tp = target.shape[shard_dim], get_tp_size()
    even = full is None
    full = local * tp if full is None else full
    expected = tuple(full if d == shard_dim else size for d, size in enumerate(target.shape))
    _check_shape(tensor, expected, what, f" ({tp} ranks x {local})" if even and tp > 1 else "")
    start = get_tp_rank() * local if start is None else start
    target.copy_(tensor.narrow(shard_dim, start, local))


def _check_fused(tensor: torch.Tensor, full_sizes: list[int], target: torch.Tensor, what: str) -> None:
    """A checkpoint tensor of fused projections ([q; k; v], [gate; up]) holds exactly their full sizes
    stacked: checked before splitting it (a wrong size would fail in torch without the tensor's name)."""
    rows = " + ".join(map(str, full_sizes))
    _check_shape(tensor, (sum(full_sizes), *target.shape[1:]), what, f" ({rows} rows)")


class ParallelLinearBase(nn.Linear):
    """What every tensor-parallel linear shares; the CPU re-layout (CpuLinear) accepts these."""

    reduce_output = False  # RowParallelLinear: the output is a partial sum to all-reduce

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        _copy_checked(getattr(self, param_name).data, tensor, param_name)


class ColumnParallelLinear(ParallelLinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, divide(out_features, get_tp_size(), "output features"), bias=bias)

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        _copy_checked(getattr(self, param_name).data, tensor, param_name, shard_dim=0)


class MergedColumnParallelLinear(ParallelLinearBase):
    """Projections fused side by side, e.g. [gate; up]: shard_id is the index of one of them,
    or None for a checkpoint tensor that is fused already (Phi-3's gate_up_proj)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = True):
        tp = get_tp_size()
        self.full_sizes = list(output_sizes)
        self.local_sizes = [divide(size, tp, "output features") for size in output_sizes]
        super().__init__(in_features, sum(self.local_sizes), bias=bias)

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        target = getattr(self, param_name).data
        if shard_id is None:  # already fused: check the whole before splitting it
            _check_fused(tensor, self.full_sizes, target, param_name)
            pieces = tensor.split(self.full_sizes)
        elif not (isinstance(shard_id, int) and 0 <= shard_id < len(self.full_sizes)):
            raise ValueError(f"{param_name}: no projection {shard_id!r} among {len(self.full_sizes)}")
        offset = 0
        for index, local in enumerate(self.local_sizes):
            if shard_id is None or shard_id == index:
                piece = pieces[index] if shard_id is None else tensor
                _copy_checked(target.narrow(0, offset, local), piece, f"{param_name} (projection {index})", shard_dim=0)
            offset += local


class QKVParallelLinear(ParallelLinearBase):
    """The fused [q; k; v] projection of this rank's heads. shard_id "q"/"k"/"v" for separate
    checkpoint tensors (Llama), None for a fused [q; k; v] one (MPT, GPT-2, Phi-3, ...).
    num_heads / num_kv_heads / q_size / kv_size are this rank's."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = True):
        self.head_dim = head_dim
        self.full_num_heads, self.full_num_kv_heads = num_heads, num_kv_heads
        self.num_heads = divide(num_heads, get_tp_size(), "the number of attention heads")
        self.first_kv_head, self.num_kv_heads = kv_head_shard(num_kv_heads)
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias=bias)

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        target = getattr(self, param_name).data
        hd = self.head_dim
        full_q, full_kv = self.full_num_heads * hd, self.full_num_kv_heads * hd
        if shard_id is None:  # fused [q; k; v]: check the whole before splitting it
            _check_fused(tensor, [full_q, full_kv, full_kv], target, param_name)
            pieces = dict(zip("qkv", tensor.split([full_q, full_kv, full_kv])))
        elif shard_id in ("q", "k", "v"):
            pieces = {str(shard_id): tensor}
        else:
            raise ValueError(f"{param_name}: no projection {shard_id!r} (q, k or v)")
        layout = {  # piece -> (offset in the local fused tensor, first row in the full piece, rows)
            "q": (0, get_tp_rank() * self.q_size, self.q_size),
            "k": (self.q_size, self.first_kv_head * hd, self.kv_size),
            "v": (self.q_size + self.kv_size, self.first_kv_head * hd, self.kv_size),
        }
        for name, piece in pieces.items():
            offset, first, rows = layout[name]
            full = full_q if name == "q" else full_kv  # KV heads may be replicated: not always tp x rows
            _copy_checked(
                target.narrow(0, offset, rows), piece, f"{param_name} ({name})", shard_dim=0, start=first, full=full
            )


class RowParallelLinear(ParallelLinearBase):
    reduce_output = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(divide(in_features, get_tp_size(), "input features"), out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_tp_size() == 1:
            return F.linear(x, self.weight, self.bias)
        out = all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        if param_name == "bias":  # added once, after the all-reduce: every rank keeps all of it
            return super().load_weight(param_name, tensor)
        _copy_checked(self.weight.data, tensor, param_name, shard_dim=1)


def _load_vocab_rows(target: torch.Tensor, tensor: torch.Tensor, vocab_size: int, what: str) -> None:
    start, end, _ = padded_shard(vocab_size)
    _copy_checked(target.narrow(0, 0, end - start), tensor, what, shard_dim=0, start=start, full=vocab_size)
    target[end - start :].zero_()  # padding rows: never looked up, their logits cut off


class VocabParallelEmbedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        self.vocab_size = num_embeddings
        self.vocab_start, self.vocab_end, local = padded_shard(num_embeddings)
        super().__init__(local, embedding_dim)
        # ids -> rows, when another layer holds them (read_rows_from); None: this layer's own weight
        self.row_lookup: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if get_tp_size() == 1:
            return self.rows(input_ids)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = torch.where(mine, input_ids - self.vocab_start, 0)
        return all_reduce(self.rows(local_ids) * mine.unsqueeze(-1).to(self.weight.dtype))

    def rows(self, local_ids: torch.Tensor) -> torch.Tensor:
        """This shard's rows `local_ids` [...] -> [..., embedding_dim], a fresh tensor in the weight's dtype."""
        if self.row_lookup is not None:
            return self.row_lookup(local_ids)
        return F.embedding(local_ids, self.weight)

    def read_rows_from(self, lookup: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Look rows up through `lookup` (local ids -> rows, same shard, same dtype) and free this layer's
        own weight: a tied LM head re-laid out for the CPU GEMM keeps the one copy (cpu_linear.CpuLinear.lookup).
        `weight` stays as an empty placeholder in the dtype (the trunk reads the model's dtype from it)."""
        self.row_lookup = lookup
        self.weight = nn.Parameter(torch.empty(0, dtype=self.weight.dtype), requires_grad=False)

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        _load_vocab_rows(self.weight.data, tensor, self.vocab_size, param_name)


class ParallelLMHead(ParallelLinearBase):
    """This rank's padded shard of the vocabulary's output rows (tie it to the embedding by
    assigning the embedding's weight: the shards are the same). gather_logits makes the whole."""

    def __init__(self, hidden_size: int, vocab_size: int, bias: bool = False):
        self.vocab_size = vocab_size
        super().__init__(hidden_size, padded_shard(vocab_size)[2], bias=bias)

    def load_weight(self, param_name: str, tensor: torch.Tensor, shard_id: ShardId = None) -> None:
        _load_vocab_rows(getattr(self, param_name).data, tensor, self.vocab_size, param_name)


def gather_logits(local_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Every rank's vocabulary shard of the logits side by side, padding cut: [N, vocab_size]."""
    if get_tp_size() == 1:
        return local_logits
    return all_gather_last_dim(local_logits)[..., :vocab_size]


def slice_heads(per_head: torch.Tensor, num_heads: int) -> torch.Tensor:
    """This rank's entries of a per-attention-head tensor (MPT's ALiBi slopes)."""
    local = divide(num_heads, get_tp_size(), "the number of attention heads")
    return per_head[get_tp_rank() * local : (get_tp_rank() + 1) * local]


def ungroup_qkv(fused: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder a fused QKV weight/bias stored per KV group, [kv, (q heads of the group, k, v), head_dim]
    (GPT-NeoX: one head per group; Falcon: any grouping), into [all q; all k; all v], the layout
    QKVParallelLinear loads."""
    rest = fused.shape[1:]
    grouped = fused.reshape(num_kv_heads, -1, head_dim, *rest)
    q, k, v = grouped[:, :-2], grouped[:, -2], grouped[:, -1]
    return torch.cat([q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)])
