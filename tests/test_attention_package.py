"""The attention package's selector and the model registry's one table (issue 17's reshape)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from vllm_cli.kernels import cpu

from vllm_cli.attention.cpu_backend import CpuAttentionBackend
from vllm_cli.attention.selector import get_attention_backend
from vllm_cli.attention.torch_backend import TorchAttentionBackend
from vllm_cli.model_executor.models import get_model_class, supported_architectures
from vllm_cli.model_executor.models.base import DecoderForCausalLM


def test_torch_on_the_cpu_is_the_cpu_backend_when_the_kernels_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CLI_ATTENTION_BACKEND", raising=False)
    library = cpu.load()
    if library is not None:
        assert type(get_attention_backend("torch", 16, torch.device("cpu"))) is CpuAttentionBackend
    monkeypatch.setattr(cpu, "_library", None)  # no compiler, a failed build, or VLLM_CLI_CPU_KERNELS=0
    assert type(get_attention_backend("torch", 16, torch.device("cpu"))) is TorchAttentionBackend
    assert type(get_attention_backend("auto", 16, torch.device("cpu"))) is TorchAttentionBackend


def test_every_native_architecture_is_a_decoder_trunk() -> None:
    for arch in supported_architectures():
        cls = get_model_class(SimpleNamespace(architectures=[arch], model_type=None), "native")
        assert issubclass(cls, DecoderForCausalLM), arch


@pytest.mark.parametrize("model_type,arch", [("llama", "LlamaForCausalLM"), ("mpt", "MptForCausalLM"),
                                             ("qwen3", "Qwen3ForCausalLM")])
def test_model_type_stands_for_its_architecture(model_type: str, arch: str) -> None:
    cls = get_model_class(SimpleNamespace(architectures=None, model_type=model_type), "native")
    assert cls.__name__ == arch


@pytest.mark.parametrize("module", ["vllm_cli.attention.triton_backend", "vllm_cli.attention.layer",
                                    "vllm_cli.model_executor.models.llama"])
def test_modules_import_first_without_a_circle(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
