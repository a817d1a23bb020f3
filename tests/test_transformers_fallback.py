"""The transformers fallback (--model-impl): transformers' own modeling code on our paged KV
cache, scheduler and sampler, against transformers' generate on the same weights."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers

from conftest import build_tiny_checkpoint, tiny_config
from vllm_cli import LLM, SamplingParams
from vllm_cli.config import EngineArgs
from vllm_cli.model_executor.models import get_model_class
from vllm_cli.model_executor.models.transformers_fallback import TransformersForCausalLM

VOCAB = 256
MAX_TOKENS = 16
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)  # the defaults lie outside a tiny vocab
# Architectures with no native class. Each exercises something of its own:
FALLBACK_CONFIGS = {
    # tied embeddings, a scaled-embedding buffer, sliding window on every other layer, query_pre_attn
    # scaling, final logit softcapping (applied by transformers' head code in compute_logits).
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=8, attn_logit_softcapping=None,
                   final_logit_softcapping=30.0, query_pre_attn_scalar=24),
    # attention_multiplier as the attention scale, embedding/residual multipliers, logits_scaling.
    "granite": dict(model_type="granite", attention_multiplier=0.2, embedding_multiplier=2.0,
                    residual_multiplier=0.5, logits_scaling=4.0),
    # checkpoint conversion: save_pretrained writes per-expert w1/w2/w3 tensors, transformers 5's
    # module holds them fused (its conversion mapping renames and stacks them in expert order).
    "mixtral": dict(model_type="mixtral", intermediate_size=64, num_local_experts=12, num_experts_per_tok=2),
}


def _fallback_config(kind: str):
    values = {**_COMMON, **FALLBACK_CONFIGS[kind]}
    return transformers.AutoConfig.for_model(values.pop("model_type"), **values)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 30, (n,), generator=g).tolist()
    return [torch.randint(0, VOCAB, (length,), generator=g).tolist() for length in lengths]


def _reference_tokens(reference, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True), use_tqdm=False)
    return [out.outputs[0].token_ids for out in outs]


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def log_messages():
    handler = _Capture()
    logger = logging.getLogger("vllm_cli")  # does not propagate to the root logger caplog watches
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.mark.parametrize("kind", sorted(FALLBACK_CONFIGS))
def test_fallback_matches_transformers_generate(kind, tmp_path, log_messages):
    path = build_tiny_checkpoint(tmp_path, _fallback_config(kind), seed=1)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert get_model_class(reference.config) is TransformersForCausalLM  # auto: no native class
    # A 23-block pool of 4-token blocks cannot hold 6 prompts of up to 29 tokens plus 16 new
    # tokens each (preemption), and a 16-token step budget splits the prompts (chunked prefill).
    llm = LLM(path, skip_tokenizer_init=True, block_size=4, num_kv_blocks=24, max_model_len=64,
              max_num_batched_tokens=16)
    assert isinstance(llm.engine.model, TransformersForCausalLM)
    assert f"using the transformers fallback for {type(reference).__name__}" in log_messages
    prompts = _prompts(6, seed=3)
    ours = _greedy(llm, prompts)
    assert llm.engine.scheduler.num_preemptions > 0
    for prompt, tokens in zip(prompts, ours):
        assert tokens == _reference_tokens(reference, prompt), kind
    # Log-probabilities too: a monotonic head transform (softcapping, logits_scaling) keeps the argmax.
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts[:2]],
                        SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    for prompt, out in zip(prompts[:2], outs):
        with torch.no_grad():
            ref = torch.log_softmax(reference(torch.tensor([prompt])).logits[0].float(), dim=-1)
        ours_lp = [entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], prompt[1:])]
        expected = ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
        torch.testing.assert_close(torch.tensor(ours_lp), expected, atol=1e-4, rtol=1e-4)


def test_mixtral_checkpoint_holds_unfused_experts(tmp_path):
    """What makes the mixtral case above a test of transformers' checkpoint conversions."""
    from safetensors import safe_open

    path = build_tiny_checkpoint(tmp_path, _fallback_config("mixtral"), seed=1)
    with safe_open(f"{path}/model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.block_sparse_moe.experts.11.w1.weight" in keys
    assert not any("gate_up_proj" in k for k in keys)


def test_model_impl_transformers_matches_native_llama(tmp_path):
    path = build_tiny_checkpoint(tmp_path, tiny_config("llama", VOCAB), seed=1)
    prompts = _prompts(4, seed=5)
    kwargs = dict(skip_tokenizer_init=True, block_size=4, num_kv_blocks=40, max_model_len=64,
                  max_num_batched_tokens=16)
    native = LLM(path, model_impl="native", **kwargs)
    assert not isinstance(native.engine.model, TransformersForCausalLM)
    fallback = LLM(path, model_impl="transformers", **kwargs)
    assert isinstance(fallback.engine.model, TransformersForCausalLM)
    assert _greedy(fallback, prompts) == _greedy(native, prompts)


def test_model_impl_native_without_native_class_is_a_clear_error(tmp_path):
    path = build_tiny_checkpoint(tmp_path, _fallback_config("granite"), seed=1)
    with pytest.raises(ValueError, match="GraniteForCausalLM has no native implementation"):
        LLM(path, skip_tokenizer_init=True, model_impl="native")


def test_model_impl_is_validated_and_unsupported_models_say_why():
    with pytest.raises(ValueError, match="model_impl must be one of auto, native, transformers"):
        EngineArgs(model_impl="vllm")
    # StableLM's transformers class does not route attention through AttentionInterface.
    stablelm = transformers.AutoConfig.for_model("stablelm", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4)
    with pytest.raises(ValueError, match="is not supported.*AttentionInterface"):
        get_model_class(stablelm)
    # Attention-logit softcapping is not something our attention backend does.
    gemma2 = _fallback_config("gemma2")
    gemma2.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError, match="softcapping"):
        get_model_class(gemma2, "transformers")
