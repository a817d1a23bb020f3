"""The processes of a tensor-parallel engine: where each rank runs, starting them, watching
them, failures and shutdown. What a worker rank does once started lives in worker/worker.py.

Three ways to lay the ranks out, all over torch.distributed's TCP rendezvous:
- one machine (the default): the driver (rank 0, the engine) spawns ranks 1..N-1;
- several machines: `--nnodes M --node-rank R --master-addr HOST --master-port P` on each
  machine; node 0 runs the driver and ranks 1..N/M-1, node R spawns ranks R*N/M.. and waits;
- torchrun: every process it starts runs the same command; rank 0 becomes the driver and the
  others become workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from torchrun).

A spawned worker is a fresh interpreter running the worker module (worker_process_main here
sets the process up, then calls its loop). A worker that dies is seen by the driver either as
a failed collective or by the watchdog thread polling the processes; either way the engine
stops with WorkerFailedError naming the rank and its error.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.distributed import WorkerFailedError
from vllm_cli.distributed import parallel_state as ps
from vllm_cli.logger import init_logger

logger = init_logger(__name__)

_SHUTDOWN_WAIT_S = 10.0


@dataclass
class Placement:
    """Which ranks this process and this machine run, and where the group meets."""

    world_size: int
    rank: int | None  # this process's rank; None on a node that only hosts workers
    spawn_ranks: list[int]  # ranks this process starts as child processes
    local_world_size: int  # ranks sharing this machine (their CPU threads split its cores)
    local_rank_base: int  # local_rank = rank - local_rank_base (the CUDA device index)
    master_addr: str
    master_port: int
    torchrun: bool = False

    @classmethod
    def from_args(cls, args: EngineArgs) -> Placement:
        tp = args.tensor_parallel_size
        env = os.environ
        if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
            world = int(env["WORLD_SIZE"])
            if world != tp:
                raise ValueError(
                    f"torchrun started {world} processes, but --tensor-parallel-size is {tp}: "
                    "start one process per rank"
                )
            rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", 0))
            return cls(
                tp,
                rank,
                [],
                int(env.get("LOCAL_WORLD_SIZE", world)),
                rank - local_rank,
                env["MASTER_ADDR"],
                int(env["MASTER_PORT"]),
                torchrun=True,
            )
        nnodes, node_rank = args.nnodes, args.node_rank
        if not 0 <= node_rank < nnodes:
            raise ValueError(f"--node-rank must be in [0, {nnodes}), got {node_rank}")
        per_node = ps.divide(tp, nnodes, "--tensor-parallel-size")
        first = node_rank * per_node
        addr = args.master_addr or env.get("MASTER_ADDR") or "127.0.0.1"
        port = args.master_port or (int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None)
        if port is None:
            if nnodes > 1:
                raise ValueError(
                    "a multi-node group needs a rendezvous port on every node: --master-port PORT (or MASTER_PORT)"
                )
            port = _free_port(addr)
        ranks = list(range(first, first + per_node))
        this_rank = 0 if node_rank == 0 else None
        return cls(tp, this_rank, [r for r in ranks if r != this_rank], per_node, first, addr, port)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TensorParallelGroup:
    """The driver's view of the group (or, on a workers-only node, the workers it hosts)."""

    _active: TensorParallelGroup | None = None  # one default process group per process

    def __init__(self, args: EngineArgs, device: torch.device, placement: Placement, worker_module: str):
        """Start the ranks this process hosts (each a fresh interpreter running
        `python -m worker_module`) and, on the driver, join the group with them."""
        if TensorParallelGroup._active is not None:
            raise RuntimeError("a tensor-parallel engine is already running in this process; shut it down first")
        self.placement = placement
        self.worker_module = worker_module
        if device.type == "cuda" and torch.cuda.device_count() < self.placement.local_world_size:
            raise ValueError(
                f"{self.placement.local_world_size} tensor-parallel ranks on this machine need as many "
                f"GPUs; {torch.cuda.device_count()} visible"
            )
        self.device = device
        self.failure: str | None = None
        self._processes: dict[int, subprocess.Popen] = {}
        self._error_files: dict[int, str] = {}
        self._closed = False
        self._threads_before = torch.get_num_threads()
        p = self.placement
        threads = ps.threads_per_rank(p.local_world_size) if device.type == "cpu" else 1
        for rank in p.spawn_ranks:
            self._processes[rank] = self._spawn(rank, args, threads)
        TensorParallelGroup._active = self
        atexit.register(self.shutdown)
        if p.rank is None:
            return
        rank = p.rank
        if device.type == "cpu":
            torch.set_num_threads(threads)
        logger.info(
            "Tensor parallelism: %d ranks (%s backend), rendezvous at %s:%d%s",
            p.world_size,
            "nccl" if device.type == "cuda" else "gloo",
            p.master_addr,
            p.master_port,
            f"; this machine runs ranks {p.rank}..{p.rank + p.local_world_size - 1}"
            if p.local_world_size < p.world_size
            else "",
        )
        try:
            self.guarded(
                lambda: ps.init_distributed(rank, p.world_size, p.master_addr, p.master_port, device),
                "waiting for every rank to join",
            )
        except BaseException:
            self.shutdown()  # the workers that did start go too
            raise
        self._watchdog = threading.Thread(target=self._watch, name="vllm-cli-tp-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self, rank: int, args: EngineArgs, threads: int) -> subprocess.Popen:
        """A fresh interpreter running the worker module (not multiprocessing's spawn, which re-imports
        the caller's __main__: a script without a __main__ guard would run again in every worker)."""
        fd, error_file = tempfile.mkstemp(prefix=f"vllm-cli-tp{rank}-", suffix=".err")
        os.close(fd)
        self._error_files[rank] = error_file
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        # The driver logs for the group; a worker speaks up only for warnings and errors.
        env = {**os.environ, "PYTHONPATH": pythonpath, "VLLM_CLI_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", self.worker_module], stdin=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps((rank, self.placement, args, threads, error_file)))
        proc.stdin.close()
        return proc

    @property
    def is_driver(self) -> bool:
        return self.placement.rank == 0

    # ----- the driver's side of the protocol -----
    def broadcast(self, obj: Any) -> None:
        """Send obj to every worker (the settings, the KV-cache size, each step)."""
        self.check()
        try:
            ps.broadcast_object(obj)
        except Exception as e:
            raise self._failed(e) from None

    def check(self) -> None:
        if self.failure is not None:
            raise WorkerFailedError(self.failure)

    def guarded(self, fn: Callable[[], Any], what: str) -> Any:
        """Run a blocking call on a helper thread while watching the workers, so that a worker
        that dies before it pairs with the call is reported, not waited for."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = fn()
            except BaseException as e:  # handed to the caller below
                box["error"] = e

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            dead = self._dead_worker() if thread.is_alive() else None
            if dead is not None:
                self.failure = f"{dead} while {what}"
                raise WorkerFailedError(self.failure)
        if "error" in box:
            raise self._failed(box["error"])
        return box.get("result")

    def wait_for_workers(self) -> int:
        """A workers-only node: block until its workers exit; their worst exit code."""
        codes = [proc.wait() for proc in self._processes.values()]
        self._closed = True
        for rank, error in self._errors().items():
            logger.error("tensor-parallel worker rank %d failed: %s", rank, error)
        return max(codes, default=0)

    # ----- failures -----
    def _dead_worker(self) -> str | None:
        for rank, proc in self._processes.items():
            code = proc.poll()
            if code is not None and not self._closed:
                reason = self._errors().get(rank) or _exit_reason(code)
                return f"tensor-parallel worker rank {rank} (pid {proc.pid}) died: {reason}"
        return None

    def _errors(self) -> dict[int, str]:
        """Each worker's own last words, where it lived to write them."""
        errors = {}
        for rank, path in self._error_files.items():
            try:
                with open(path, encoding="utf-8") as f:
                    if text := f.read().strip():
                        errors[rank] = text
            except OSError:
                pass
        return errors

    def _failed(self, error: BaseException, otherwise: str | None = None) -> WorkerFailedError:
        """The group's failure: a dead worker's own account when there is one, else `otherwise`."""
        # A collective fails at once when a peer's connection drops; give the watchdog's view
        # (which rank, its own error) a moment to arrive, it says more than gloo's message.
        deadline = time.monotonic() + 2.0
        while (dead := self._dead_worker()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.failure = dead or otherwise or f"tensor-parallel collective failed: {error}"
        return WorkerFailedError(self.failure)

    def step_failed(self, error: BaseException) -> WorkerFailedError:
        """A forward failed on the driver: a dead worker says why; otherwise the workers may be
        waiting in a collective the driver never reached, and the group cannot run another step."""
        if isinstance(error, WorkerFailedError):
            return error
        return self._failed(
            error,
            f"the tensor-parallel step failed on rank 0 ({type(error).__name__}: {error}); the ranks are out of step",
        )

    def _watch(self) -> None:
        while not self._closed and self.failure is None:
            dead = self._dead_worker()
            if dead is not None:
                self.failure = dead
                logger.error("%s; the engine stops", dead)
                return
            time.sleep(0.5)

    # ----- shutdown -----
    def shutdown(self) -> None:
        """Tell the workers to exit (if they can still hear), then make sure they are gone."""
        if self._closed:
            return
        self._closed = True
        if self.is_driver and self.failure is None:
            try:
                ps.broadcast_object(None)
            except Exception:  # a worker is gone: the ones left are stopped below
                pass
        # a failed group cannot tell its workers to stop: they may be blocked in a collective
        deadline = time.monotonic() + (_SHUTDOWN_WAIT_S if self.failure is None else 0.0)
        for proc in self._processes.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for path in self._error_files.values():
            try:
                os.unlink(path)
            except OSError:
                pass
        ps.destroy_distributed()
        if self.device.type == "cpu":
            torch.set_num_threads(self._threads_before)
        if TensorParallelGroup._active is self:
            TensorParallelGroup._active = None
        atexit.unregister(self.shutdown)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies, however it
    dies (SIGKILL included), so no worker outlives its driver."""
    try:
        import ctypes  # lazy: only a spawned worker needs it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_process_main(run_worker: Callable[[int, Placement, EngineArgs, int], None]) -> None:
    """The body of a spawned worker process: read what _spawn sent, tie the process to its
    parent, then run_worker(rank, placement, args, threads); its error goes to the error file."""
    rank, placement, args, threads, error_file = pickle.load(sys.stdin.buffer)
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the driver handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_worker(rank, placement, args, threads)
    except BaseException as e:
        with open(error_file, "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None
