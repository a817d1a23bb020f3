"""The tensor-parallel group of this process and the collectives the model layers use.

One process per rank. Rank 0 (the driver) owns the scheduler and the sampler; every rank holds
a shard of the weights and runs the same forward on the same step. Two process groups, as in
vLLM: the device group (NCCL on CUDA, gloo on CPU) carries activations (all-reduce, all-gather),
and a gloo group on the CPU carries the per-step batch description from the driver
(broadcast_object_list), so the driver never waits on a GPU for a pickled message.

Without init_distributed() every helper here is the identity of a world of one, so the
single-process engine pays nothing.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# The CPU group waits for the driver's next step for as long as the server is idle: the
# timeout must outlast any idle period (gloo's default, 30 minutes, does not).
IDLE_TIMEOUT = datetime.timedelta(days=365)


@dataclass
class TPState:
    rank: int = 0
    world_size: int = 1
    device_group: Any = None  # a torch.distributed ProcessGroup once joined
    cpu_group: Any = None


_STATE = TPState()


def get_tp_rank() -> int:
    return _STATE.rank


def get_tp_size() -> int:
    return _STATE.world_size


def init_distributed(
    rank: int, world_size: int, master_addr: str, master_port: int, device: torch.device, timeout_s: float = 600.0
) -> None:
    """Join the tensor-parallel group (blocks until every rank has joined, or timeout_s)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    init_method = f"tcp://{_url_host(master_addr)}:{master_port}"
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    device_group = dist.group.WORLD
    # The step messages get their own gloo group with the idle timeout, whatever the device
    # backend, so the activations' collectives keep the short one (a stuck peer is reported).
    cpu_group = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    _STATE.rank, _STATE.world_size = rank, world_size
    _STATE.device_group, _STATE.cpu_group = device_group, cpu_group


def destroy_distributed() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer may be gone already: nothing left to tear down cleanly
            pass
    _STATE.rank, _STATE.world_size, _STATE.device_group, _STATE.cpu_group = 0, 1, None, None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ----- collectives (identity in a world of one) -----


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (row-parallel linears, the vocab-parallel embedding)."""
    if _STATE.world_size > 1:
        dist.all_reduce(tensor, group=_STATE.device_group)
    return tensor


def all_gather_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along the last dimension, in rank order (the LM head's logits)."""
    if _STATE.world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(_STATE.world_size)]
    dist.all_gather(parts, tensor, group=_STATE.device_group)
    return torch.cat(parts, dim=-1)


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """The driver's picklable object on every rank (step descriptions, the engine's settings)."""
    if _STATE.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_STATE.cpu_group)
    return box[0]


# ----- how a dimension splits over the ranks -----


def divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size ({parts})")
    return total // parts


def padded_shard(total: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int]:
    """(start, end, local size) of an uneven split padded to equal shards: the vocabulary
    (GPT-2's 50257 over 2 ranks: 25129 rows each, the last one padded by one row)."""
    rank = _STATE.rank if rank is None else rank
    world_size = _STATE.world_size if world_size is None else world_size
    local = -(-total // world_size)
    start = min(rank * local, total)
    return start, min(start + local, total), local


def kv_head_shard(num_kv_heads: int) -> tuple[int, int]:
    """(first KV head, local count) of this rank: split when there are at least as many KV heads
    as ranks, else each head replicated over world_size / num_kv_heads consecutive ranks."""
    tp, rank = _STATE.world_size, _STATE.rank
    if num_kv_heads >= tp:
        local = divide(num_kv_heads, tp, "the number of KV heads")
        return rank * local, local
    if tp % num_kv_heads:
        raise ValueError(
            f"the tensor-parallel size ({tp}) must divide or be a multiple of the number of KV heads ({num_kv_heads})"
        )
    return rank // (tp // num_kv_heads), 1


def threads_per_rank(local_world_size: int) -> int:
    """CPU threads for each of local_world_size ranks sharing this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))
