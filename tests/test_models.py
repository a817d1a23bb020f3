"""Each native architecture against transformers' own implementation on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import TINY_CONFIGS, build_tiny_checkpoint, tiny_config
from vllm_cli import LLM, SamplingParams

VOCAB = 256


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    build_tiny_checkpoint(path, tiny_config(request.param, VOCAB), seed=1)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return request.param, str(path), reference


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 60, (n,), generator=g).tolist()
    return [torch.randint(0, VOCAB, (length,), generator=g).tolist() for length in lengths]


def test_prefill_logits_match_transformers(checkpoint):
    kind, path, reference = checkpoint
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=128)
    prompts = _prompts(6)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0, logprobs=0), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = torch.log_softmax(reference(torch.tensor([prompt])).logits[0].float(), dim=-1)
        ours = [entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], prompt[1:])]
        expected = ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
        torch.testing.assert_close(torch.tensor(ours), expected, atol=1e-4, rtol=1e-4)
        first = out.outputs[0]
        assert first.token_ids[0] == int(ref[-1].argmax())
        assert first.logprobs[0][first.token_ids[0]].logprob == pytest.approx(float(ref[-1].max()), abs=1e-4)


def test_greedy_generation_matches_transformers_batched(checkpoint):
    kind, path, reference = checkpoint
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=256, max_num_batched_tokens=64)
    prompts = _prompts(8, seed=3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)
    alone = llm.generate({"prompt_token_ids": prompts[3]}, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                         use_tqdm=False)[0]
    assert alone.outputs[0].token_ids == outs[3].outputs[0].token_ids  # single == batched
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                     max_new_tokens=24, do_sample=False, eos_token_id=None,
                                     pad_token_id=0)[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == ref, kind
