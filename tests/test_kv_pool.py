"""The KV pool is committed at start-up: its memory is resident before the first request (RSS
does not climb as traffic first touches each block), and a budget the machine cannot hold is a
clear error at start, not an OOM mid-traffic."""

from __future__ import annotations

import pytest
import torch

from vllm_cli import LLM
from vllm_cli.worker.model_runner import allocate_kv_pool


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# 2 layers x K and V x 64 MiB: each tensor above glibc's largest mmap threshold (32 MiB), so it is
# fresh pages, never a freed heap chunk that is resident already.
POOL_BYTES = 256 * 2**20


def test_allocated_pool_is_resident_at_once():
    before = _rss_bytes()
    caches = allocate_kv_pool(2, 2**17, 4, 32, torch.float32, torch.device("cpu"))
    grown = _rss_bytes() - before
    assert sum(k.nbytes + v.nbytes for k, v in caches) == POOL_BYTES
    assert grown >= 0.95 * POOL_BYTES, f"RSS grew {grown / 2**20:.0f} MiB for a {POOL_BYTES / 2**20:.0f} MiB pool"
    assert all(not k.any() and not v.any() for k, v in caches)  # zero, the null block included


def test_the_measurement_sees_an_uncommitted_allocation():
    """What the pool used to be (torch.empty): the same RSS measurement shows it not resident, so the
    test above could fail."""
    before = _rss_bytes()
    untouched = torch.empty(POOL_BYTES // 4, dtype=torch.float32)
    assert _rss_bytes() - before < 0.25 * POOL_BYTES
    del untouched


def test_a_pool_larger_than_memory_is_a_clear_error_at_start(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"the KV cache needs [\d.]+ GiB but only [\d.]+ GiB of memory is available"):
        LLM(tiny_llama_dir, kv_cache_memory="64TiB")
