"""vllm-cli: serve, chat with and benchmark LLMs on a paged-KV, continuous-batching engine.

`LLM` and `SamplingParams` are imported lazily so that `vllm-cli --help` stays instant
(no torch import until an engine is actually built).
"""

from vllm_cli.version import __version__

__all__ = [
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "EngineArgs",
    "__version__",
]


def __getattr__(name: str) -> object:
    """The public names, each imported on first use (see above)."""
    if name == "LLM":
        from vllm_cli.engine.llm import LLM

        return LLM
    if name in ("SamplingParams", "StructuredOutputsParams"):
        from vllm_cli import sampling_params

        return getattr(sampling_params, name)
    if name in ("RequestOutput", "CompletionOutput"):
        from vllm_cli import outputs

        return getattr(outputs, name)
    if name == "EngineArgs":
        from vllm_cli.config import EngineArgs

        return EngineArgs
    raise AttributeError(f"module 'vllm_cli' has no attribute {name!r}")
