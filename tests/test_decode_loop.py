"""The C decode loop (kernels/decode_loop.c, models/llama_decode_loop.py) against the torch path it
replaces: the same model, the same prompts, the loop on and off (`model.use_decode_loop`), compared
token by token and logprob by logprob, at 1 and 3 decode sequences of different context lengths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_tiny_checkpoint, tiny_config

from vllm_cli import LLM, SamplingParams
from vllm_cli.kernels import cpu as cpu_kernels
from vllm_cli.kernels import decode_loop

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="the CPU kernels are not built")

# lengths differ, so the 3-sequence steps attend over different contexts
PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of one hundred degrees on the Celsius scale at sea level, and at a lower"
    " temperature high in the mountains, where the air pressure is lower, so that",
    "1, 1, 2, 3, 5, 8,",
]
GGUF_PROMPTS = [
    "Here is a haiku about autumn:\n",
    "SELECT name FROM users WHERE",
    "The largest planet in the solar system is",
]


@pytest.fixture
def loop_calls(monkeypatch) -> list[int]:
    """The batch size of every step the C loop ran."""
    calls: list[int] = []
    run = decode_loop.DecodeLoop.run

    def counted(self, hidden, *args):
        calls.append(hidden.shape[0])
        return run(self, hidden, *args)

    monkeypatch.setattr(decode_loop.DecodeLoop, "run", counted)
    return calls


def _generate(llm: LLM, prompts: list[str], loop: bool, max_tokens: int = 6):
    llm.engine.model.use_decode_loop = loop
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=5)
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


def _assert_loop_equals_torch_path(
    llm: LLM, calls: list[int], atol: float, max_tokens: int = 6, all_prompts: list[str] = PROMPTS
) -> None:
    """Greedy tokens equal, and the top-5 logprobs of every decode step within atol."""
    for prompts in (all_prompts[1:2], all_prompts):  # S = 1, then S = 3
        calls.clear()
        with_loop = _generate(llm, prompts, True, max_tokens)
        assert calls and set(calls) == {len(prompts)}, calls  # every decode step ran in C
        calls.clear()
        torch_path = _generate(llm, prompts, False, max_tokens)
        assert not calls
        for a, b in zip(with_loop, torch_path):
            assert list(a.token_ids) == list(b.token_ids)
            for step_a, step_b in zip(a.logprobs, b.logprobs):
                assert step_a.keys() == step_b.keys()
                for token, logprob in step_b.items():
                    assert abs(step_a[token].logprob - logprob.logprob) <= atol, (token, step_a, step_b)


def _llm(model: str, **kwargs) -> LLM:
    return LLM(model=model, num_kv_blocks=64, max_model_len=128, enable_prefix_caching=False, **kwargs)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, smollm2_tokenizer):
    def build(kind: str) -> str:
        return build_tiny_checkpoint(
            tmp_path_factory.mktemp(f"tiny-{kind}"), tiny_config(kind, len(smollm2_tokenizer)), smollm2_tokenizer
        )

    return build


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_tiny_llama_quantized(tiny_llama_dir, loop_calls, method):
    _assert_loop_equals_torch_path(_llm(tiny_llama_dir, quantization=method), loop_calls, atol=1e-4)


def test_float_parts_through_the_row_major_kernel(tiny_dirs, loop_calls):
    """hidden 48 is no whole number of 32-weight groups: q/k/v, o and gate/up stay float parts (the
    loop's decode_matmul_f32), down_proj (96 inputs) is int4; tied embeddings, 3 heads of 16."""
    llm = _llm(tiny_dirs("llama_tied_mha"), quantization="int4")
    layer = llm.engine.model.layers[0]
    assert layer.self_attn.qkv_proj.parts["0"].qtype is None and layer.mlp.down_proj.parts["0"].qtype == "q4_1"
    _assert_loop_equals_torch_path(llm, loop_calls, atol=1e-4)


def test_qwen2_qkv_bias(tiny_dirs, loop_calls):
    from safetensors.torch import load_file, save_file

    model_dir = tiny_dirs("qwen2")
    (checkpoint,) = Path(model_dir).glob("*.safetensors")
    state = load_file(str(checkpoint))
    gen = torch.Generator().manual_seed(1)
    for name, tensor in state.items():  # transformers initializes biases to 0: give them values
        if name.endswith("_proj.bias"):
            state[name] = torch.randn(tensor.shape, generator=gen).to(tensor.dtype)
    save_file(state, str(checkpoint), metadata={"format": "pt"})
    llm = _llm(model_dir, quantization="int8")
    bias = llm.engine.model.layers[0].self_attn.qkv_proj.bias
    assert bias is not None and bias.abs().min() > 0
    _assert_loop_equals_torch_path(llm, loop_calls, atol=1e-4)


@pytest.mark.parametrize("kind", ["mistral", "phi3"])
def test_sliding_window(tiny_dirs, loop_calls, kind):
    """A 24-token window: the long prompt's decode steps see only the window (Phi-3: its checkpoint's
    own fused qkv_proj and gate_up_proj, split into parts at load)."""
    llm = _llm(tiny_dirs(kind), quantization="int8")
    assert llm.engine.model.layers[0].self_attn.sliding_window == 24
    _assert_loop_equals_torch_path(llm, loop_calls, atol=1e-4, max_tokens=10)


def test_bfloat16_model(tiny_llama_dir, loop_calls):
    """bf16: the loop keeps activations in float32 (the torch path rounds each to bf16), so the two
    agree to bf16 rounding, not bit for bit."""
    llm = _llm(tiny_llama_dir, quantization="int8", dtype="bfloat16")
    calls = loop_calls
    with_loop = _generate(llm, PROMPTS, True)
    assert calls and set(calls) == {3}
    torch_path = _generate(llm, PROMPTS, False)
    for a, b in zip(with_loop, torch_path):
        first_a, first_b = a.logprobs[0], b.logprobs[0]
        assert a.token_ids[0] == b.token_ids[0]
        assert abs(first_a[a.token_ids[0]].logprob - first_b[b.token_ids[0]].logprob) < 0.05


def test_shipped_gguf_greedy_and_logprobs(smollm2_gguf_path, loop_calls):
    llm = _llm(smollm2_gguf_path)
    _assert_loop_equals_torch_path(llm, loop_calls, atol=1e-4, max_tokens=12, all_prompts=GGUF_PROMPTS)


def test_unsupported_models_keep_the_torch_path(tiny_dirs, tiny_llama_dir, loop_calls, monkeypatch):
    # Qwen3's q/k norms: its attention is not the loop's
    llm = _llm(tiny_dirs("qwen3"), quantization="int8")
    _generate(llm, PROMPTS[:1], True)
    assert llm.engine.model._decode_loop is None and not loop_calls
    del llm
    # one linear without kernel parts: the whole model stays on the torch path, with the same output
    llm = _llm(tiny_llama_dir, quantization="int8")
    llm.engine.model.layers[1].mlp.down_proj.kernel_parts = lambda: None
    fallback = _generate(llm, PROMPTS, True)
    assert llm.engine.model._decode_loop is None and not loop_calls
    assert [list(o.token_ids) for o in fallback] == [list(o.token_ids) for o in _generate(llm, PROMPTS, False)]
    del llm
    # the switch
    monkeypatch.setenv(decode_loop.DECODE_LOOP_ENV, "0")
    llm = _llm(tiny_llama_dir, quantization="int8")
    _generate(llm, PROMPTS[:1], True)
    assert llm.engine.model._decode_loop is None and not loop_calls


def test_float_matmul_kernel_abi():
    """decode_matmul_f32 / _bf16: y = x @ w^T with row-major weights, the kernel-part ABI."""
    import ctypes

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 96, generator=gen)
    for dtype, atol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-3)):
        w = torch.randn(40, 96, generator=gen).to(dtype)
        y = torch.empty(3, 40)
        address = decode_loop.float_matmul_address(dtype)
        assert address is not None
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        fn = ctypes.CFUNCTYPE(None, ptr, i64, i64, ptr, i64, ptr)(address)
        fn(x.data_ptr(), 3, 96, w.data_ptr(), 40, y.data_ptr())
        torch.testing.assert_close(y, x @ w.float().T, atol=atol, rtol=1e-5)
