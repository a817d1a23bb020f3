"""Tensor parallelism over torch.distributed: the group's state and collectives
(parallel_state), the worker processes (executor). This module itself imports no torch, so the
CLI can name the error below without slowing `--help`."""


class WorkerFailedError(RuntimeError):
    """A tensor-parallel worker died or failed: the engine cannot go on."""
