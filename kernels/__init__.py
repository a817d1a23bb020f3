"""Triton kernels for the CUDA path, and C kernels for the CPU (`cpu`: RMSNorm, rotary and
paged decode attention, built with the system compiler at first use), installed as `vllm_cli.kernels` (never as a
top-level `kernels`, a name another PyPI package owns).

Each module holds its Triton kernel(s), the Python launcher and a plain-torch reference
function the tests compare the kernel against (under `TRITON_INTERPRET=1` on the CPU):

- `paged_attention`: decode (one query per sequence, split-K) and varlen prefill over the
  paged KV cache; grouped-query attention, ALiBi, sliding window.
- `kv_cache`: scatter new K/V into the cache by slot mapping.
- `rms_norm`: RMSNorm with an optional fused residual add.
- `rotary`: rotary embedding, neox (rotate halves) and GPT-J (interleaved) styles.

The attention references are in `attention_reference` (no triton import: the CPU kernel's tests
use them too).

Importing this package imports nothing: triton is an optional dependency (`vllm-cli[triton]`),
and under the interpreter `TRITON_INTERPRET=1` must be set before a kernel module is imported.
"""
