"""One rank's share of the work: its device, its model (this rank's shard under tensor
parallelism), its KV cache; and the loop of a tensor-parallel worker rank.

The engine builds a Worker in its own process (rank 0, the driver). Every other rank runs
run_worker(), which builds the same Worker from the driver's EngineArgs, allocates the KV pool
the driver sized, and runs each StepInput the driver broadcasts until it sends None. This
module is also the program of a spawned worker process (`python -m vllm_cli.worker.worker`,
started by distributed/executor.py, which owns the process side: stdin, signals, error file).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import torch

from vllm_cli.config import CPU_KV_CACHE_SPACE_ENV, DEFAULT_GPU_MEMORY_UTILIZATION, EngineArgs
from vllm_cli.distributed import parallel_state as ps
from vllm_cli.logger import init_logger, set_log_level
from vllm_cli.model_executor.loader import load_model, resolve_device, resolve_dtype
from vllm_cli.model_executor.model_source import ModelSource, load_hf_config, resolve_model_source
from vllm_cli.model_executor.models.base import CausalLM
from vllm_cli.worker.model_runner import ModelOutput, ModelRunner, StepInput

if TYPE_CHECKING:
    from vllm_cli.distributed.executor import Placement, TensorParallelGroup

logger = init_logger(__name__)

WORKER_MODULE = "vllm_cli.worker.worker"  # the program of a spawned worker rank: this module (see its end)


def local_device(device: torch.device, rank: int, local_rank_base: int) -> torch.device:
    """The rank's own GPU on CUDA (cuda:local_rank); the CPU is shared."""
    if device.type != "cuda":
        return device
    index = rank - local_rank_base
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


class Worker:
    """The model and KV cache of this process's rank. On the driver of a tensor-parallel group
    (tp_group given) it also sends the workers what they must mirror: the KV pool, each step."""

    def __init__(
        self,
        args: EngineArgs,
        device: torch.device,
        source: ModelSource | None = None,
        hf_config: Any = None,
        tp_group: TensorParallelGroup | None = None,
    ):
        self.args = args
        self.device = device
        self.tp_group = tp_group
        source = source or resolve_model_source(args.model, args.revision)
        hf_config = hf_config or load_hf_config(source, trust_remote_code=args.trust_remote_code)
        self.dtype = resolve_dtype(args.dtype, hf_config, device)
        model = load_model(
            source,
            hf_config,
            dtype=self.dtype,
            device=device,
            load_format=args.load_format,
            seed=args.seed or 0,
            model_impl=args.model_impl,
            quantization=args.quantization,
            quantize_lm_head=args.quantize_lm_head,
        )
        assert isinstance(model, CausalLM)
        self.runner = ModelRunner(model, device, self.dtype, args.block_size, args.attention_backend)

    @property
    def model(self) -> CausalLM:
        return self.runner.model

    def determine_num_kv_blocks(self, max_model_len: int) -> int:
        """The KV pool's size in blocks (the null block included), from --num-kv-blocks, the GPU's
        free memory or the CPU budget; raises ValueError when it cannot hold one max_model_len sequence."""
        args = self.args
        per_block = self.runner.kv_cache_bytes_per_block()
        if args.num_kv_blocks is not None:
            num_blocks = args.num_kv_blocks
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            share = args.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
            budget = free - total * (1.0 - share) - 2**30  # 1 GiB for activations
            num_blocks = int(budget // per_block)
        else:
            if args.gpu_memory_utilization is not None and (self.tp_group is None or self.tp_group.is_driver):
                logger.warning(
                    "--gpu-memory-utilization does not apply on CPU (ignored): the KV cache's size there is "
                    "--kv-cache-memory (e.g. 4GiB) or $%s (GiB)",
                    CPU_KV_CACHE_SPACE_ENV,
                )
            local_ranks = self.tp_group.placement.local_world_size if self.tp_group else 1
            num_blocks = int(cpu_kv_cache_bytes(args, local_ranks) // per_block)
        min_blocks = -(-max_model_len // args.block_size) + 1  # + the null block
        if num_blocks < min_blocks:
            raise ValueError(
                f"the KV cache holds {max(num_blocks - 1, 0) * args.block_size} tokens, fewer than max_model_len "
                f"({max_model_len}): give it more memory (--kv-cache-memory / --gpu-memory-utilization) "
                f"or lower --max-model-len"
            )
        return num_blocks

    def init_kv_cache(self, num_blocks: int, max_model_len: int) -> None:
        """Allocate and commit the KV pool (the driver: then the workers allocate the same one);
        ValueError when the memory is not there."""
        self.runner.set_max_model_len(max_model_len)
        needed = num_blocks * self.runner.kv_cache_bytes_per_block()
        advice = "lower --kv-cache-memory / --num-kv-blocks / --gpu-memory-utilization or --max-model-len"
        if self.device.type == "cpu" and needed > (available := available_cpu_memory()):
            raise ValueError(
                f"the KV cache needs {needed / 2**30:.2f} GiB but only {available / 2**30:.2f} GiB of memory "
                f"is available: {advice}"
            )
        try:
            self.runner.allocate_kv_cache(num_blocks)
        except (RuntimeError, MemoryError) as e:  # torch's allocators (CUDA's OutOfMemoryError included)
            self.runner.kv_caches = []
            raise ValueError(f"could not allocate the KV cache ({needed / 2**30:.2f} GiB): {e}; {advice}") from None
        if self.tp_group is not None:
            self.tp_group.broadcast((num_blocks, max_model_len))

    def execute_model(self, step: StepInput) -> ModelOutput:
        """Run one step; the logits of step.logit_rows and the hidden states of step.hidden_rows. The
        driver first sends the step to the workers, whose forwards pair with its own collectives."""
        if self.tp_group is None:
            return self.runner.execute(step)
        self.tp_group.broadcast(step)
        try:
            return self.runner.execute(step)
        except Exception as e:  # a collective with a dead peer, or a failure on this rank
            raise self.tp_group.step_failed(e) from e


def cpu_kv_cache_bytes(args: EngineArgs, local_ranks: int = 1) -> int:
    """The CPU KV pool of one rank: --kv-cache-memory, else $VLLM_CPU_KVCACHE_SPACE (GiB), each
    rank's own as vLLM's CPU KV-cache space is; else the default share of free RAM, split between
    the ranks on this machine."""
    if args.kv_cache_memory is not None:
        return cast(int, args.kv_cache_memory)  # EngineArgs parsed "4GiB" into bytes
    env = os.environ.get(CPU_KV_CACHE_SPACE_ENV, "").strip()
    if env:
        try:
            gib = float(env)
        except ValueError:
            gib = 0.0
        if not gib > 0:
            raise ValueError(f"{CPU_KV_CACHE_SPACE_ENV} must be a number of GiB > 0, got {env!r}")
        return int(gib * 2**30)
    return default_cpu_kv_budget() // local_ranks


def available_cpu_memory() -> int:
    """Bytes of memory available for new allocations now (MemAvailable, else the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def default_cpu_kv_budget() -> int:
    """4 GiB (vLLM's CPU default), but never more than a third of the memory available now."""
    return min(4 * 2**30, available_cpu_memory() // 3)


# ----- tensor parallelism: where this process stands in the group -----


def start_tensor_parallel(args: EngineArgs, device: torch.device) -> tuple[TensorParallelGroup, torch.device]:
    """Spawn (or, under torchrun, join) the workers; returns the group this process drives as
    rank 0 and the driver's device. A process that is not the driver (a workers-only node, a
    torchrun rank > 0) runs its workers here and exits when the driver is done."""
    # Lazy: the process machinery stays out of the single-process engine.
    from vllm_cli.distributed.executor import Placement, TensorParallelGroup

    placement = Placement.from_args(args)
    if placement.torchrun and placement.rank:  # one of torchrun's processes, not rank 0: a worker
        run_worker(placement.rank, placement, args, ps.threads_per_rank(placement.local_world_size))
        raise SystemExit(0)
    if placement.rank == 0:  # the driver's own GPU is current before NCCL starts
        device = local_device(device, 0, placement.local_rank_base)
    group = TensorParallelGroup(args, device, placement, WORKER_MODULE)
    if placement.rank is None:
        logger.info(
            "Node %d of %d: running tensor-parallel ranks %s for the driver at %s:%d",
            args.node_rank,
            args.nnodes,
            ", ".join(map(str, placement.spawn_ranks)),
            placement.master_addr,
            placement.master_port,
        )
        raise SystemExit(group.wait_for_workers())
    try:
        group.broadcast(args)
    except BaseException:
        group.shutdown()  # the engine never holds this group: stop its workers here
        raise
    return group, device


def run_worker(rank: int, placement: Placement, args: EngineArgs, threads: int) -> None:
    """One worker rank, in this process: join, load the shard, run the driver's steps."""
    set_log_level("warning")  # the driver logs for the group

    device = local_device(resolve_device(args.device), rank, placement.local_rank_base)
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    ps.init_distributed(rank, placement.world_size, placement.master_addr, placement.master_port, device)
    try:
        args = ps.broadcast_object(None)  # the driver's settings win over this node's command line
        worker = Worker(args, device)
        num_blocks, max_model_len = ps.broadcast_object(None)
        worker.init_kv_cache(num_blocks, max_model_len)
        runner = worker.runner
        while (step := ps.broadcast_object(None)) is not None:
            runner.execute(step)
    finally:
        ps.destroy_distributed()


if __name__ == "__main__":  # a spawned worker rank; the import is here so one-process engines skip it
    from vllm_cli.distributed.executor import worker_process_main

    worker_process_main(run_worker)
