"""The model registry, the one list of native implementations: config.json `architectures` -> our class
(imported when asked for), else transformers' own modeling code through the fallback."""

from __future__ import annotations

import importlib
from typing import Any

from vllm_cli.config import MODEL_IMPLS
from vllm_cli.model_executor.models.base import CausalLM

# architecture (config.json `architectures`) -> (module, class, the model_type that stands for it
# in configs without `architectures`, e.g. from GGUF metadata)
_MODELS: dict[str, tuple[str, str, str | None]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM", "llama"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM", "mistral"),
    "Qwen2ForCausalLM": ("llama", "Qwen2ForCausalLM", "qwen2"),
    "MptForCausalLM": ("mpt", "MptForCausalLM", "mpt"),
    "MPTForCausalLM": ("mpt", "MptForCausalLM", None),  # the spelling in mosaicml's config.json
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel", "gpt2"),
    "GPTNeoXForCausalLM": ("gpt_neox", "GPTNeoXForCausalLM", "gpt_neox"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM", "phi3"),
    "FalconForCausalLM": ("falcon", "FalconForCausalLM", "falcon"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM", "qwen3"),
    # Base-model checkpoints (what sentence-transformers saves: the trunk alone, its tensor names without
    # the trunk's prefix, no LM head): embeddings only (--runner pooling).
    "LlamaModel": ("llama", "LlamaForCausalLM", None),
    "MistralModel": ("llama", "MistralForCausalLM", None),
    "Qwen2Model": ("llama", "Qwen2ForCausalLM", None),
    "Qwen3Model": ("qwen3", "Qwen3ForCausalLM", None),
}
BASE_MODEL_ARCHITECTURES = frozenset({"LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model"})
_MODEL_TYPES = {model_type: arch for arch, (_, _, model_type) in _MODELS.items() if model_type}


def is_base_model(hf_config: Any) -> bool:
    """A checkpoint of the trunk alone (no LM head): it can embed, not generate."""
    return bool(set(getattr(hf_config, "architectures", None) or []) & BASE_MODEL_ARCHITECTURES)


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(hf_config: Any, model_impl: str = "auto") -> type[CausalLM]:
    """The class that runs this config. model_impl: "auto" (our native class when the registry
    has one, else transformers' modeling code through the fallback), "native" (error if there
    is none) or "transformers" (always the fallback)."""
    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {', '.join(MODEL_IMPLS)}, got {model_impl!r}")
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", None)
    if not archs and model_type in _MODEL_TYPES:
        archs = [_MODEL_TYPES[model_type]]
    name = ", ".join(archs) or model_type or "unknown"
    if model_impl != "transformers":
        for arch in archs:
            if arch in _MODELS:
                module_name, class_name, _ = _MODELS[arch]
                module = importlib.import_module(f"vllm_cli.model_executor.models.{module_name}")
                return getattr(module, class_name)
    if model_impl == "native":
        raise ValueError(
            f"model architecture {name} has no native implementation (--model-impl native); "
            f"native: {', '.join(supported_architectures())}. Use --model-impl auto or transformers "
            "to run it with transformers' own modeling code"
        )
    # Imported here: the fallback imports transformers' modeling code, which native models never need.
    from vllm_cli.model_executor.models.transformers_fallback import TransformersForCausalLM, transformers_model_class

    try:
        transformers_model_class(hf_config)
    except ValueError as e:
        if model_impl == "transformers":
            raise ValueError(f"--model-impl transformers cannot run model architecture {name}: {e}") from None
        raise ValueError(
            f"model architecture {name} is not supported; supported: {', '.join(supported_architectures())}, "
            f"and causal LMs transformers implements (the transformers fallback cannot run this one: {e})"
        ) from None
    return TransformersForCausalLM
