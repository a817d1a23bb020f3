"""Family variants beyond the parametrized parity tests of test_models.py: the other Falcon
layouts, sequential GPT-NeoX, Phi-3 LongRoPE with partial rotary, Qwen3 sliding layers,
GPT-2 hub checkpoints; full-size shapes against transformers' own parameter counts."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from conftest import build_tiny_checkpoint
from vllm_cli import LLM, SamplingParams
from vllm_cli.model_executor.models import get_model_class

VOCAB = 256


def _config(model_type: str, **values):
    return transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, initializer_range=0.2, **values)


def _prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _reference_greedy(reference, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _assert_matches_transformers(path: str, prompts: list[list[int]], max_tokens: int = 16) -> None:
    """Prompt logprobs close and greedy tokens equal, batched with chunked prefill."""
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=128, max_num_batched_tokens=32)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=0),
                        use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = torch.log_softmax(reference(torch.tensor([prompt])).logits[0].float(), dim=-1)
        ours = torch.tensor([entry[t].logprob for entry, t in zip(out.prompt_logprobs[1:], prompt[1:])])
        expected = ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
        assert out.outputs[0].token_ids == _reference_greedy(reference, prompt, max_tokens)


VARIANTS = {
    # falcon-40b/180b: new decoder architecture, grouped KV heads, separate ln_attn / ln_mlp.
    "falcon_new_arch": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                       new_decoder_architecture=True, max_position_embeddings=512)),
    # falcon-11B: new decoder architecture with one LayerNorm shared by attention and MLP.
    "falcon_new_arch_one_ln": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              num_kv_heads=2, new_decoder_architecture=True,
                                              num_ln_in_parallel_attn=1, max_position_embeddings=512)),
    # Multi-head, sequential attention then MLP, biases (falcon-rw's block, with rotary positions).
    "falcon_mha_sequential": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             multi_query=False, parallel_attn=False, bias=True,
                                             max_position_embeddings=512)),
    "gpt_neox_sequential": ("gpt_neox", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=512, rotary_pct=0.5,
                                             use_parallel_residual=False, tie_word_embeddings=True)),
    # Qwen3 with the sliding window on layers >= max_window_layers only.
    "qwen3_sliding": ("qwen3", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=512, use_sliding_window=True, sliding_window=12,
                                    max_window_layers=1)),
    # Llama 3.1 / 3.2: llama3 rope scaling (its frequencies come from transformers' initialiser,
    # which the model builds under torch.device("meta")); a short original length so that it matters.
    "llama3_rope": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "gpt2_scaled_by_layer": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=1,
                                          eos_token_id=2, scale_attn_by_inverse_layer_idx=True,
                                          activation_function="gelu")),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_transformers(variant, tmp_path):
    model_type, values = VARIANTS[variant]
    path = build_tiny_checkpoint(tmp_path, _config(model_type, **values), seed=1)
    _assert_matches_transformers(path, _prompts([5, 37, 20], seed=2))


@pytest.fixture(scope="module")
def phi3_longrope_dir(tmp_path_factory):
    """Phi-4-mini-like: 3/4 of each head rotates; LongRoPE with an original length of 32."""
    rotary_half = int(16 * 0.75) // 2
    config = _config("phi3", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=32,
                     partial_rotary_factor=0.75, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
                                   "long_factor": [1.5 + i for i in range(rotary_half)]})
    return build_tiny_checkpoint(tmp_path_factory.mktemp("phi3-longrope"), config, seed=1)


def test_phi3_longrope_long_sequences_match_transformers(phi3_longrope_dir):
    """max_model_len past the original length: long factors throughout, as transformers uses for a
    sequence longer than the original length (prompts past it here)."""
    _assert_matches_transformers(phi3_longrope_dir, _prompts([33, 50, 41], seed=3), max_tokens=12)


def test_phi3_longrope_short_factors_within_the_original_length(phi3_longrope_dir):
    """max_model_len within the original length: short factors, as transformers for such sequences."""
    llm = LLM(phi3_longrope_dir, skip_tokenizer_init=True, num_kv_blocks=64, max_model_len=32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(phi3_longrope_dir, dtype=torch.float32).eval()
    prompts = _prompts([6, 16, 11], seed=4)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == _reference_greedy(reference, prompt, 16)


def test_gpt2_hub_checkpoint_names(tmp_path):
    """Hub GPT-2 files name tensors without `transformer.` and keep the attn.bias mask buffers."""
    path = build_tiny_checkpoint(tmp_path, _config("gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                                   bos_token_id=1, eos_token_id=2), seed=1)
    state = load_file(f"{path}/model.safetensors")
    hub = {name.removeprefix("transformer."): t for name, t in state.items()}
    for i in range(2):
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 512, 512, dtype=torch.bool))
    save_file(hub, f"{path}/model.safetensors", metadata={"format": "pt"})
    _assert_matches_transformers(path, _prompts([9, 25], seed=4), max_tokens=8)


def test_falcon_alibi_is_refused():
    config = _config("falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True)
    config.architectures = ["FalconForCausalLM"]
    with torch.device("meta"), pytest.raises(ValueError, match="ALiBi"):
        get_model_class(config)(config)


FULL_SIZE = {  # the published shapes, cut to 2 layers
    "gpt2": ("gpt2", dict(), (12, 64)),
    "EleutherAI/pythia-410m": ("gpt_neox", dict(vocab_size=50304, hidden_size=1024, num_attention_heads=16,
                                                intermediate_size=4096, rotary_pct=0.25), (16, 64)),
    "microsoft/Phi-3-mini-4k-instruct": ("phi3", dict(vocab_size=32064, hidden_size=3072, num_attention_heads=32,
                                                      num_key_value_heads=32, intermediate_size=8192,
                                                      sliding_window=2047), (32, 96)),
    "tiiuae/falcon-7b": ("falcon", dict(hidden_size=4544, num_attention_heads=71), (1, 64)),
    "tiiuae/falcon-40b": ("falcon", dict(hidden_size=8192, num_attention_heads=128, num_kv_heads=8,
                                         new_decoder_architecture=True), (8, 64)),
    "Qwen/Qwen3-0.6B": ("qwen3", dict(vocab_size=151936, hidden_size=1024, num_attention_heads=16,
                                      num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                                      tie_word_embeddings=True), (8, 128)),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_shapes_match_transformers(name):
    model_type, values, kv_shape = FULL_SIZE[name]
    layers = {"gpt2": "n_layer"}.get(model_type, "num_hidden_layers")
    config = transformers.AutoConfig.for_model(model_type, **values, **{layers: 2})
    with torch.device("meta"):
        reference = transformers.AutoModelForCausalLM.from_config(config)
        config.architectures = [type(reference).__name__]
        ours = get_model_class(config)(config)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert ours.kv_cache_shape() == (2, *kv_shape)
