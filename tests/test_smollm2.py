"""SmolLM2-135M-Instruct, the real default model: greedy continuations of prompts and chats,
all submitted together, equal transformers' `generate` on the same weights (GGUF and the
same weights saved as an HF directory)."""

from __future__ import annotations

import os

import pytest
import torch

from vllm_cli import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at",
    "import numpy as np\n",
    "Les chats sont",
    "1, 1, 2, 3, 5, 8,",
    "The best way to learn a language is",
    "Q: What is the largest planet?\nA:",
]
CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Translate to Italian."}, {"role": "user", "content": "Good morning, friend!"}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
     {"role": "user", "content": "Another one?"}],
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def reference(smollm2_gguf_path):
    import transformers

    directory, name = os.path.split(smollm2_gguf_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    return model


@pytest.fixture(scope="module")
def hf_dir(reference, smollm2_tokenizer, tmp_path_factory):
    import copy

    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("smollm2-hf")
    config = copy.deepcopy(reference.config)
    del config.quantization_config  # the weights are saved dequantized
    config.save_pretrained(path)
    state = {k: v.contiguous() for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    smollm2_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def expected(reference, smollm2_tokenizer):
    """transformers' greedy continuation of each prompt (one at a time: no padding)."""
    prompt_ids = [smollm2_tokenizer.encode(p) for p in PROMPTS]
    prompt_ids += [smollm2_tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"] for c in CHATS]
    results = []
    eos = smollm2_tokenizer.eos_token_id
    with torch.no_grad():
        for ids in prompt_ids:
            out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=eos)
            tokens = out[0, len(ids):].tolist()
            results.append(tokens)
    return prompt_ids, results


def _check(llm: LLM, expected) -> None:
    prompt_ids, results = expected
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    chat_outs = llm.chat(CHATS, params, use_tqdm=False)
    for out, ids, tokens in zip(outs + chat_outs, prompt_ids, results):
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == tokens, out.prompt
        text = out.outputs[0].text
        assert text == llm.get_tokenizer().decode(tokens, skip_special_tokens=True)


def test_gguf_greedy_matches_transformers(smollm2_gguf_path, expected):
    llm = LLM(smollm2_gguf_path, kv_cache_memory="256MiB", max_model_len=2048)
    _check(llm, expected)


def test_hf_directory_greedy_matches_transformers(hf_dir, expected):
    llm = LLM(hf_dir, kv_cache_memory="256MiB", max_model_len=2048)
    _check(llm, expected)
