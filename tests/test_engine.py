"""Engine behaviour on a tiny random Llama with SmolLM2's tokenizer: batching, preemption,
block accounting, sampling semantics, stop handling, n > 1, logprobs and input errors."""

from __future__ import annotations

import pytest
import torch

from vllm_cli import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, num_kv_blocks=512, max_num_batched_tokens=256)


def _random_prompts(n: int, vocab: int, seed: int = 0, lo: int = 2, hi: int = 80) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for length in lengths]


def _free_blocks_all_returned(engine) -> bool:
    bm = engine.block_manager
    return bm.num_free_blocks == bm.num_usable_blocks and sum(bm.ref_counts) == 0


GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def test_prompt_alone_equals_prompt_in_batch_of_32(llm):
    vocab = llm.engine.vocab_size
    prompts = _random_prompts(32, vocab, seed=1)
    batch = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    for i in (0, 7, 31):
        alone = llm.generate({"prompt_token_ids": prompts[i]}, GREEDY, use_tqdm=False)[0]
        assert alone.outputs[0].token_ids == batch[i].outputs[0].token_ids
    assert _free_blocks_all_returned(llm.engine)


def test_preemption_gives_the_same_outputs_and_returns_every_block(tiny_llama_dir, llm):
    vocab = llm.engine.vocab_size
    prompts = _random_prompts(24, vocab, seed=2, lo=20, hi=60)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ample = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    # 100 tokens per sequence at most, 40 blocks of 4 = 160 tokens: constant preemption.
    tight = LLM(tiny_llama_dir, num_kv_blocks=41, block_size=4, max_model_len=128, max_num_batched_tokens=64)
    outs = tight.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ample]
    assert _free_blocks_all_returned(tight.engine)


def test_text_prompts_and_token_prompts_mix_and_keep_order(llm):
    tok = llm.get_tokenizer()
    texts = ["Hello there", "The quick brown fox", "1, 2, 3,"]
    mixed = [texts[0], {"prompt_token_ids": tok.encode(texts[1])}, tok.encode(texts[2])]
    outs = llm.generate(mixed, GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == [tok.encode(t) for t in texts]
    assert outs[0].prompt == texts[0]
    for out in outs:
        completion = out.outputs[0]
        assert len(completion.token_ids) == 20 and completion.finish_reason == "length"
        assert completion.text == tok.decode(completion.token_ids, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    prompt = {"prompt_token_ids": [5, 6, 7, 8, 9]}
    alone = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    others = [{"prompt_token_ids": p} for p in _random_prompts(6, llm.engine.vocab_size, seed=5)]
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(others[:3] + [prompt] + others[3:], [unseeded] * 3 + [params] + [unseeded] * 3,
                         use_tqdm=False)
    assert batch[3].outputs[0].token_ids == alone
    different = llm.generate(prompt, params.clone(seed=99), use_tqdm=False)[0].outputs[0].token_ids
    assert different != alone


def test_n_choices_share_prompt_blocks_and_differ(llm):
    engine = llm.engine
    prompt = {"prompt_token_ids": list(range(10, 10 + 70))}  # 4 full blocks + a partial one
    hits_before = engine.block_manager.prefix_hits
    out = llm.generate(prompt, SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True),
                       use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 12 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    # Choices 1..3 reuse choice 0's four full prompt blocks.
    assert engine.block_manager.prefix_hits - hits_before >= 3 * 64
    greedy = llm.generate(prompt, SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True),
                          use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in greedy.outputs}) == 1
    assert _free_blocks_all_returned(engine)


def test_prefix_cache_hits_give_identical_greedy_output(tiny_llama_dir):
    prompts = _random_prompts(6, 49152, seed=11, lo=40, hi=90)
    shared = list(range(100, 164))  # 4 shared full blocks
    prompts = [{"prompt_token_ids": shared + p} for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    cached = LLM(tiny_llama_dir, num_kv_blocks=256)
    uncached = LLM(tiny_llama_dir, num_kv_blocks=256, enable_prefix_caching=False)
    first = cached.generate(prompts, params, use_tqdm=False)
    again = cached.generate(prompts, params, use_tqdm=False)  # everything cached now
    reference = uncached.generate(prompts, params, use_tqdm=False)
    assert all(o.num_cached_tokens >= 64 for o in again)
    for a, b, c in zip(first, again, reference):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids == c.outputs[0].token_ids
    assert _free_blocks_all_returned(cached.engine)


def test_partial_last_block_is_taken_over_exactly(tiny_llama_dir):
    """A finished request's last, partly filled block serves the next request whose tokens
    start the same way: only the tokens after the match are computed, outputs unchanged."""
    base = _random_prompts(1, 49152, seed=5, lo=71, hi=72)[0]  # 4 full blocks + 7 tokens
    tails = _random_prompts(3, 49152, seed=6, lo=10, hi=20)
    follow_ups = [base + tails[0], base[:67] + tails[1], base + tails[2]]  # full match, 3 of 7, full again
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    reference = LLM(tiny_llama_dir, num_kv_blocks=256, enable_prefix_caching=False)
    llm = LLM(tiny_llama_dir, num_kv_blocks=256)
    cached = []
    for i, prompt in enumerate(follow_ups):
        # max_tokens=1: the request's computed tokens are exactly the prompt
        llm.generate({"prompt_token_ids": base}, SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
        out = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
        ref = reference.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids, i
        cached.append(out.num_cached_tokens)
    assert cached == [71, 67, 71]
    assert _free_blocks_all_returned(llm.engine)


def test_stop_string_spanning_tokens_cuts_the_text(llm):
    tok = llm.get_tokenizer()
    base = llm.generate("Once upon a time", GREEDY, use_tqdm=False)[0].outputs[0]
    text = base.text
    assert len(text) > 12
    # A stop string that straddles a token boundary in the greedy text.
    offsets, pieces = [], ""
    for t in base.token_ids:
        pieces = tok.decode(base.token_ids[: base.token_ids.index(t) + 1], skip_special_tokens=True)
        offsets.append(len(pieces))
    boundary = next(o for o in offsets if 3 <= o <= len(text) - 3)
    stop = text[boundary - 2: boundary + 2]
    out = llm.generate("Once upon a time", GREEDY.clone(stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[: text.index(stop)]
    kept = llm.generate("Once upon a time", GREEDY.clone(stop=[stop], include_stop_str_in_output=True),
                        use_tqdm=False)[0].outputs[0]
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_stop_token_ids_eos_min_tokens_and_max_tokens(llm):
    base = llm.generate("Hi", GREEDY, use_tqdm=False)[0].outputs[0]
    stop_id = base.token_ids[5]
    out = llm.generate("Hi", GREEDY.clone(stop_token_ids=[stop_id]), use_tqdm=False)[0].outputs[0]
    first = base.token_ids.index(stop_id)
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.token_ids == base.token_ids[: first + 1]
    # min_tokens masks the stop token until it is reached.
    late = llm.generate("Hi", GREEDY.clone(stop_token_ids=[stop_id], min_tokens=first + 2), use_tqdm=False)[0]
    assert len(late.outputs[0].token_ids) >= first + 2
    # eos stops generation unless ignore_eos; force it with a logit bias.
    eos = llm.get_tokenizer().eos_token_id
    forced = SamplingParams(temperature=0, max_tokens=10, logit_bias={eos: 100.0})
    assert llm.generate("Hi", forced, use_tqdm=False)[0].outputs[0].token_ids == [eos]
    assert len(llm.generate("Hi", forced.clone(ignore_eos=True), use_tqdm=False)[0].outputs[0].token_ids) == 10


def test_logprobs_are_log_softmax_of_the_model_logits(llm):
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": [11, 12, 13, 14]}, params, use_tqdm=False)[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 6
    # Recompute with a plain forward over prompt + output: the model's own logits.
    seq = [11, 12, 13, 14] + completion.token_ids
    scores = _full_forward_logprobs(llm, seq)
    for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
        expected = scores[3 + i]
        assert entry[token].logprob == pytest.approx(float(expected[token]), abs=1e-4)
        assert entry[token].rank == 1  # greedy picks the top token
        top = sorted((e for e in entry.values()), key=lambda e: e.rank)[:3]
        assert [e.rank for e in top] == [1, 2, 3]
        assert all(isinstance(e.decoded_token, str) for e in entry.values())
    assert completion.cumulative_logprob == pytest.approx(sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs)))
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == 4
    for pos in range(1, 4):
        assert out.prompt_logprobs[pos][seq[pos]].logprob == pytest.approx(float(scores[pos - 1][seq[pos]]), abs=1e-4)


def _full_forward_logprobs(llm, token_ids: list[int]) -> torch.Tensor:
    """Every position's log-probabilities from transformers' own forward on the same weights."""
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(llm.engine.source.path).eval()
    with torch.no_grad():
        return torch.log_softmax(reference(torch.tensor([token_ids])).logits[0].float(), dim=-1)


def test_bad_input_is_rejected_clearly(llm):
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate({"prompt_token_ids": [5] * 600}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate({"prompt_token_ids": [10**9]}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="logprobs"):
        llm.generate("x", SamplingParams(logprobs=21), use_tqdm=False)
    with pytest.raises(TypeError, match="unknown argument"):
        LLM("x", not_a_flag=1)
    assert not llm.engine.has_unfinished_requests()


def test_max_model_len_caps_generation(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, max_model_len=32, num_kv_blocks=16)
    out = llm.generate({"prompt_token_ids": list(range(5, 25))}, SamplingParams(temperature=0, max_tokens=None, ignore_eos=True), use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 32


def test_chat_uses_the_template_and_multi_conversation(llm):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    outs = llm.chat([conv, conv + [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye"}]],
                    GREEDY, use_tqdm=False)
    assert len(outs) == 2
    tok = llm.get_tokenizer()
    prompt_text = tok.decode(outs[1].prompt_token_ids)
    assert "Be brief." in prompt_text and "Bye" in prompt_text and prompt_text.rstrip().endswith("assistant")


def test_abort_frees_blocks(llm):
    engine = llm.engine
    engine.add_request("a", {"prompt_token_ids": list(range(3, 90))}, GREEDY)
    engine.add_request("b", {"prompt_token_ids": list(range(3, 40))}, GREEDY)
    engine.step()
    engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_usable_blocks
    engine.abort_request(["a", "b"])
    assert not engine.has_unfinished_requests()
    assert _free_blocks_all_returned(engine)


def test_prompt_logprobs_survive_preemption(tiny_llama_dir, llm):
    prompts = [{"prompt_token_ids": p} for p in _random_prompts(6, llm.engine.vocab_size, seed=9, lo=15, hi=30)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=1)
    ample = llm.generate(prompts, params, use_tqdm=False)
    tight = LLM(tiny_llama_dir, num_kv_blocks=17, block_size=4, max_model_len=64, max_num_batched_tokens=16)
    outs = tight.generate(prompts, params, use_tqdm=False)
    assert tight.engine.scheduler.num_preemptions > 0
    for a, b in zip(ample, outs):
        assert len(b.prompt_logprobs) == len(b.prompt_token_ids)
        for pos, token in enumerate(b.prompt_token_ids[1:], start=1):
            assert b.prompt_logprobs[pos][token].logprob == pytest.approx(a.prompt_logprobs[pos][token].logprob, abs=1e-4)


def test_prefix_cache_exact_with_n_and_aborts(tiny_llama_dir):
    """Cache on vs off: the same greedy choices for n > 1 requests sharing a prefix, while other
    requests sharing it are aborted mid-flight (their blocks go back cached)."""
    shared = list(range(200, 248))  # 3 full blocks
    g = torch.Generator().manual_seed(21)
    tails = [torch.randint(3, 40000, (n,), generator=g).tolist() for n in (5, 17, 30, 9)]
    params = SamplingParams(n=2, temperature=0, max_tokens=12, ignore_eos=True)

    def run(caching: bool) -> dict[str, list[list[int]]]:
        engine = LLM(tiny_llama_dir, num_kv_blocks=128, enable_prefix_caching=caching).engine
        for i, tail in enumerate(tails):
            engine.add_request(f"keep{i}", None, params, prompt_token_ids=shared + tail)
            engine.add_request(f"drop{i}", None, params, prompt_token_ids=shared + tail[::-1])
        results, steps = {}, 0
        while engine.has_unfinished_requests():
            steps += 1
            if steps == 3:
                engine.abort_request([f"drop{i}" for i in range(len(tails))])
            for out in engine.step():
                if out.finished:
                    results[out.request_id] = [c.token_ids for c in out.outputs]
        bm = engine.block_manager
        assert bm.num_free_blocks == bm.num_usable_blocks
        if caching:
            assert bm.prefix_hits > 0
        return results

    cached, uncached = run(True), run(False)
    assert set(cached) == {f"keep{i}" for i in range(len(tails))}
    assert cached == uncached


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor"])
def test_prompt_differing_in_one_token_shares_only_the_blocks_before_it(tiny_llama_dir, algo):
    """Through the engine: a prompt one token away from a cached one, in its second full block, is
    served its first block only; what it computes from there matches an uncached engine."""
    base = _random_prompts(1, 49152, seed=21, lo=70, hi=71)[0]  # 4 full blocks of 16 + 5 tokens
    other = list(base)
    other[20] = (other[20] + 1) % 49152  # block 1
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    llm = LLM(tiny_llama_dir, num_kv_blocks=64, prefix_caching_hash_algo=algo)
    assert llm.engine.block_manager.hash_algo == algo
    llm.generate({"prompt_token_ids": base}, params, use_tqdm=False)
    out = llm.generate({"prompt_token_ids": other}, params, use_tqdm=False)[0]
    assert out.num_cached_tokens == 16
    again = llm.generate({"prompt_token_ids": base}, params, use_tqdm=False)[0]
    assert again.num_cached_tokens == 69  # its own blocks were not overwritten by the other's
    reference = LLM(tiny_llama_dir, num_kv_blocks=64, enable_prefix_caching=False)
    expected = reference.generate([{"prompt_token_ids": p} for p in (other, base)], params, use_tqdm=False)
    assert [out.outputs[0].token_ids, again.outputs[0].token_ids] == [e.outputs[0].token_ids for e in expected]
    assert _free_blocks_all_returned(llm.engine)
