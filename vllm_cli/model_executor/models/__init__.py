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


MODEL_IMPLS = ("auto", "native", "transformers")


def get_model_class(hf_config, model_impl: str = "auto"):
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
            if arch in _REGISTRY:
                module_name, class_name = _REGISTRY[arch]
                module = importlib.import_module(f"vllm_cli.model_executor.models.{module_name}")
                return getattr(module, class_name)
    if model_impl == "native":
        raise ValueError(
            f"model architecture {name} has no native implementation (--model-impl native); "
            f"native: {', '.join(supported_architectures())}. Use --model-impl auto or transformers "
            "to run it with transformers' own modeling code"
        )
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
