"""MPT specifics beyond the parity tests in test_models.py: the real mpt-7b config builds
the published shape; ALiBi stays exact across blocks, chunks, preemption and prefix hits."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import build_tiny_checkpoint, tiny_config

from vllm_cli import LLM, SamplingParams
from vllm_cli.model_executor.layers.alibi import alibi_slopes
from vllm_cli.model_executor.model_source import ModelSource, load_hf_config
from vllm_cli.model_executor.models import get_model_class

ASSET = os.path.join(os.path.dirname(__file__), "assets", "mpt-7b")


def test_mpt_7b_config_builds_the_published_shape():
    config = load_hf_config(ModelSource(name="mosaicml/mpt-7b", path=ASSET, gguf_file=None))
    cls = get_model_class(config)
    with torch.device("meta"):
        model = cls(config)
    assert sum(p.numel() for p in model.parameters()) == 6_649_286_656
    assert model.kv_cache_shape() == (32, 32, 128)


def test_alibi_slopes_follow_mpt_for_any_head_count():
    # MPT's reference: 1 / 2^(8 i / n) for n a power of two, interleaved otherwise.
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    six = alibi_slopes(6)
    eight = alibi_slopes(8)
    assert torch.allclose(six, torch.cat([eight[1::2], eight[::2]])[:6])
    assert torch.allclose(alibi_slopes(4, alibi_bias_max=16), torch.tensor([2.0 ** -(4 * (i + 1)) for i in range(4)]))


def test_dummy_weights_from_the_config_alone(tmp_path):
    """--load-format dummy on the real config with 2 layers: no weights needed."""
    config = json.load(open(os.path.join(ASSET, "config.json")))
    config.update(n_layers=2, d_model=256, n_heads=4)  # small enough for CI, same structure
    (tmp_path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(tmp_path), load_format="dummy", skip_tokenizer_init=True, max_model_len=256, num_kv_blocks=64)
    out = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=4, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4


@pytest.fixture(scope="module")
def mpt_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpt")
    return build_tiny_checkpoint(path, tiny_config("mpt_6_heads", 256), seed=2)


def test_alibi_exact_across_chunks_preemption_and_prefix_hits(mpt_dir):
    g = torch.Generator().manual_seed(4)
    shared = torch.randint(0, 256, (40,), generator=g).tolist()
    prompts = [{"prompt_token_ids": shared + torch.randint(0, 256, (n,), generator=g).tolist()}
               for n in (5, 23, 37, 50, 61, 9)]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    reference = LLM(mpt_dir, num_kv_blocks=256, enable_prefix_caching=False, max_num_batched_tokens=2048)
    expected = [o.outputs[0].token_ids for o in reference.generate(prompts, params, use_tqdm=False)]
    # Block size 4, chunks of 16 tokens, a pool too small for everyone, prefix caching on.
    tight = LLM(mpt_dir, num_kv_blocks=41, block_size=4, max_model_len=160, max_num_batched_tokens=16)
    first = [o.outputs[0].token_ids for o in tight.generate(prompts, params, use_tqdm=False)]
    again = tight.generate(prompts, params, use_tqdm=False)
    assert tight.engine.scheduler.num_preemptions > 0
    assert any(o.num_cached_tokens > 0 for o in again)
    assert first == expected
    assert [o.outputs[0].token_ids for o in again] == expected


def test_expansion_ratio_follows_transformers(tmp_path):
    """transformers' MptMLP is 4 x d_model whatever `expansion_ratio` says, so a checkpoint it saves with
    expansion_ratio=2 holds 4x tensors. We build what it builds, and generate what it generates (before,
    a 2x MLP loaded the first half of each tensor without a word)."""
    import transformers

    config = tiny_config("mpt", 256)
    config.expansion_ratio = 2
    path = build_tiny_checkpoint(tmp_path, config, seed=5)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert reference.transformer.blocks[0].ffn.up_proj.weight.shape == (4 * 64, 64)
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=64)
    assert llm.engine.model.transformer.blocks[0].ffn.up_proj.out_features == 4 * 64
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 19, 33)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                     max_new_tokens=16, do_sample=False, eos_token_id=None,
                                     pad_token_id=0)[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == ref
