"""Model registry: config.json `architectures` -> our implementation."""

from __future__ import annotations

import importlib

# architecture name -> (module, class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "Qwen2ForCausalLM"),
    "MptForCausalLM": ("mpt", "MptForCausalLM"),
    "MPTForCausalLM": ("mpt", "MptForCausalLM"),  # the spelling in mosaicml's config.json
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel"),
    "GPTNeoXForCausalLM": ("gpt_neox", "GPTNeoXForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "FalconForCausalLM": ("falcon", "FalconForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
}
# model_type -> architecture, for configs without `architectures` (e.g. from GGUF metadata)
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "mpt": "MptForCausalLM", "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM",
                "phi3": "Phi3ForCausalLM", "falcon": "FalconForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_model_class(hf_config):
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", None)
    if not archs and model_type in _MODEL_TYPES:
        archs = [_MODEL_TYPES[model_type]]
    for arch in archs:
        if arch in _REGISTRY:
            module_name, class_name = _REGISTRY[arch]
            module = importlib.import_module(f"vllm_cli.model_executor.models.{module_name}")
            return getattr(module, class_name)
    raise ValueError(
        f"model architecture {', '.join(archs) or model_type or 'unknown'} is not supported; "
        f"supported: {', '.join(supported_architectures())}"
    )
