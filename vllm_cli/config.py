"""EngineArgs: every engine setting and its default, in one place.

The CLI subcommands map their flags onto these fields (same names as vLLM's flags with
dashes turned into underscores); the engine derives everything else from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


def cache_home() -> str:
    """Where vllm-cli keeps what it derives once and reuses (GGUF conversions, built kernels):
    ${XDG_CACHE_HOME:-~/.cache}/vllm-cli."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(os.path.expanduser(base), "vllm-cli"))


DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
CPU_KV_CACHE_SPACE_ENV = "VLLM_CPU_KVCACHE_SPACE"  # vLLM CPU's KV-cache budget, in GiB

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
LOAD_FORMATS = ("auto", "dummy")
MODEL_IMPLS = ("auto", "native", "transformers")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
STRUCTURED_OUTPUTS_BACKENDS = ("auto", "xgrammar", "guidance")
# Prefix-cache block hashes (engine/block_manager.py), as vLLM names them: SHA-256 of a compact byte
# encoding, or of canonical CBOR (cbor2). vLLM's xxhash variants are left out: not collision-resistant.
PREFIX_CACHING_HASH_ALGOS = ("sha256", "sha256_cbor")
# auto: a .gguf keeps its quantized tensors, a float checkpoint stays float; none: dequantize a .gguf
# at load; gguf: require a .gguf's own types; int8 / int4: pack a float checkpoint's linears at load
QUANTIZATION_METHODS = ("auto", "none", "gguf", "int8", "int4")
RUNNERS = ("auto", "generate", "pooling")


@dataclass
class EngineArgs:
    model: str | None = None  # local dir, hub id or .gguf file; None: the default model
    tokenizer: str | None = None  # defaults to the model's own
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    device: str = "auto"
    load_format: str = "auto"
    quantization: str = "auto"  # weight-only quantization (QUANTIZATION_METHODS), CPU
    # int8 / int4: the LM head too, in Q8_0 (vLLM leaves it float); a tied embedding shares its blocks
    quantize_lm_head: bool = False
    model_impl: str = "auto"  # auto: native class if we have one, else transformers' modeling code
    attention_backend: str = "auto"  # auto: $VLLM_CLI_ATTENTION_BACKEND, else torch (triton is opt-in)
    seed: int = 0
    max_model_len: int | None = None  # None: the model's own context length
    block_size: int = 16
    # The KV pool's budget. CPU: kv_cache_memory (bytes or "4GiB"), else $VLLM_CPU_KVCACHE_SPACE (GiB,
    # vLLM CPU's variable), else 4 GiB or a third of free RAM. CUDA: the share gpu_memory_utilization
    # (None: 0.9) of the GPU's memory. Resolved in one place: Worker.determine_num_kv_blocks.
    kv_cache_memory: int | str | None = None
    gpu_memory_utilization: float | None = None
    num_kv_blocks: int | None = None  # explicit pool size, overrides the memory budgets (tests)
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: chosen from max_model_len
    enable_prefix_caching: bool = True
    prefix_caching_hash_algo: str = "sha256"
    enable_chunked_prefill: bool = True
    chat_template: str | None = None
    served_model_name: list[str] = field(default_factory=list)
    skip_tokenizer_init: bool = False
    # Tensor parallelism: ranks in all; machines, this machine's index and the rendezvous
    # (MASTER_ADDR / MASTER_PORT when not given; one machine picks a free local port).
    tensor_parallel_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    # Constrained decoding: auto = xgrammar, llguidance for what xgrammar cannot compile.
    structured_outputs_backend: str = "auto"
    # What the model runs for (vLLM's --runner): generate text, or pool hidden states into embeddings
    # (/v1/embeddings). auto: pooling for a sentence-transformers directory, else generate.
    runner: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}, got {self.load_format!r}")
        if self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(
                f"quantization must be one of {', '.join(QUANTIZATION_METHODS)}, got {self.quantization!r}"
            )
        if self.quantize_lm_head and self.quantization not in ("int8", "int4"):
            raise ValueError(
                f"quantize_lm_head needs quantization int8 or int4 (a .gguf file brings its LM head's own type), "
                f"got {self.quantization!r}"
            )
        if self.model_impl not in MODEL_IMPLS:
            raise ValueError(f"model_impl must be one of {', '.join(MODEL_IMPLS)}, got {self.model_impl!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention_backend!r}"
            )
        if self.structured_outputs_backend not in STRUCTURED_OUTPUTS_BACKENDS:
            raise ValueError(
                f"structured_outputs_backend must be one of {', '.join(STRUCTURED_OUTPUTS_BACKENDS)}, "
                f"got {self.structured_outputs_backend!r}"
            )
        if self.prefix_caching_hash_algo not in PREFIX_CACHING_HASH_ALGOS:
            raise ValueError(
                f"prefix_caching_hash_algo must be one of {', '.join(PREFIX_CACHING_HASH_ALGOS)}, "
                f"got {self.prefix_caching_hash_algo!r}"
            )
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {self.runner!r}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.nnodes < 1:
            raise ValueError(f"nnodes must be >= 1, got {self.nnodes}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.gpu_memory_utilization is not None and not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory is not None:
            self.kv_cache_memory = parse_bytes(self.kv_cache_memory)
        if isinstance(self.served_model_name, str):
            self.served_model_name = [self.served_model_name]

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "t": 1000**4,
    "tb": 1000**4,
}


def parse_bytes(value: int | float | str) -> int:
    """'4GiB', '512MB', '2g' or a number of bytes -> bytes."""
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"kv_cache_memory must be > 0, got {value}")
        return int(value)
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    try:
        result = int(float(number) * _UNITS[unit])
    except (KeyError, ValueError):
        raise ValueError(f"kv_cache_memory must be a size such as 4GiB or 512MB, got {value!r}") from None
    if result <= 0:
        raise ValueError(f"kv_cache_memory must be > 0, got {value!r}")
    return result
