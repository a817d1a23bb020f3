"""Sampler semantics on random logits (no model): vLLM v1's processing order and logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_cli.engine.sampler import (
    Sampler,
    SamplingRow,
    compute_prompt_logprobs,
    make_generator,
)
from vllm_cli.sampling_params import SamplingParams

V = 64
EOS = 2


def row(params: SamplingParams, prompt=(), output=(), generator=None) -> SamplingRow:
    if generator is None and params.seed is not None:
        generator = make_generator(params.seed)
    return SamplingRow(params, list(prompt), list(output), generator)


@pytest.fixture
def sampler() -> Sampler:
    return Sampler(V, [EOS])


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(4, V, generator=torch.Generator().manual_seed(0)) * 3


def test_greedy_is_argmax(sampler, logits):
    before = logits.clone()
    out = sampler(logits, [row(SamplingParams(temperature=0.0)) for _ in range(4)])
    assert [o.token_id for o in out] == logits.argmax(-1).tolist()
    assert all(o.logprob is None and o.top_logprobs is None for o in out)
    assert torch.equal(logits, before)  # the caller's tensor is untouched


def test_greedy_bfloat16_and_empty(sampler, logits):
    out = sampler(logits.bfloat16(), [row(SamplingParams(temperature=0.0)) for _ in range(4)])
    assert [o.token_id for o in out] == logits.bfloat16().argmax(-1).tolist()
    assert sampler(torch.empty(0, V), []) == []


def test_logit_bias_forces_token(sampler, logits):
    bias = {7: 100.0, V + 5: 100.0, -1: 5.0}  # out-of-range ids are ignored
    rows = [row(SamplingParams(temperature=t, logit_bias=bias)) for t in (0.0, 1.0)]
    before = logits[:2].clone()
    out = sampler(logits[:2], rows)
    assert [o.token_id for o in out] == [7, 7]
    assert torch.equal(logits[:2], before)


def test_min_tokens_masks_eos_and_stop_ids_until_reached(sampler):
    logits = torch.zeros(1, V)
    logits[0, EOS] = 50.0
    logits[0, 9] = 40.0
    logits[0, 3] = 30.0
    p = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[9])
    assert sampler(logits, [row(p, output=[])])[0].token_id == 3
    assert sampler(logits, [row(p, output=[5])])[0].token_id == 3
    assert sampler(logits, [row(p, output=[5, 6])])[0].token_id == EOS
    # ignore_eos: EOS is an ordinary token (vLLM does not mask it), stop ids still are.
    q = p.clone(ignore_eos=True)
    assert sampler(logits, [row(q, output=[])])[0].token_id == EOS
    logits[0, EOS] = 0.0
    assert sampler(logits, [row(q, output=[])])[0].token_id == 3


def _processed(sampler: Sampler, logits: torch.Tensor, r: SamplingRow) -> torch.Tensor:
    return sampler._process_logits(logits, [r])[0]


def test_repetition_penalty_formula(sampler):
    logits = torch.zeros(1, V)
    logits[0, :6] = torch.tensor([2.0, -2.0, 4.0, -1.0, 3.0, 0.5])
    r = row(SamplingParams(repetition_penalty=2.0), prompt=[0, 1], output=[2, 3, 3])
    got = _processed(sampler, logits, r)
    expected = logits[0].clone()
    expected[:4] = torch.tensor([1.0, -4.0, 2.0, -2.0])  # >0 divided, <=0 multiplied; 4, 5 unseen
    assert torch.equal(got, expected)


def test_presence_frequency_penalty_formula(sampler):
    logits = torch.zeros(1, V)
    logits[0, :4] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # Prompt tokens do not count for presence/frequency.
    r = row(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt=[3, 3], output=[0, 1, 1, 1])
    got = _processed(sampler, logits, r)
    expected = logits[0].clone()
    expected[0] = 1.0 - 0.25 * 1 - 0.5
    expected[1] = 1.0 - 0.25 * 3 - 0.5
    assert torch.allclose(got, expected)


def test_penalties_apply_to_greedy_and_only_their_rows(sampler):
    logits = torch.zeros(2, V)
    logits[:, 5] = 1.0
    logits[:, 6] = 0.9
    pen = row(SamplingParams(temperature=0.0, frequency_penalty=1.0), output=[5])
    plain = row(SamplingParams(temperature=0.0), output=[5])
    assert [o.token_id for o in sampler(logits, [pen, plain])] == [6, 5]


def test_top_k_one_and_tiny_top_p_are_greedy(sampler):
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(1))
    for p in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(top_k=3, top_p=1e-6)):
        for _ in range(5):
            out = sampler(logits, [row(p) for _ in range(8)])
            assert [o.token_id for o in out] == logits.argmax(-1).tolist()


def _histogram(sampler: Sampler, logits: torch.Tensor, p: SamplingParams, n: int = 4000) -> torch.Tensor:
    """Sample n times from one row (batched as n identical rows) and count tokens."""
    torch.manual_seed(1234)
    out = sampler(logits.expand(n, -1), [row(p) for _ in range(n)])
    return torch.bincount(torch.tensor([o.token_id for o in out]), minlength=logits.shape[-1])


def test_top_k_restricts_support(sampler):
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(2))
    hist = _histogram(sampler, logits, SamplingParams(top_k=5))
    allowed = set(logits[0].topk(5).indices.tolist())
    assert set(hist.nonzero().flatten().tolist()) == allowed


def test_top_p_keeps_smallest_nucleus(sampler):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (V - 4))
    logits = probs.clamp_min(1e-12).log()[None]
    hist = _histogram(sampler, logits, SamplingParams(top_p=0.7))  # 0.5 < 0.7 <= 0.8: keep {0, 1}
    assert set(hist.nonzero().flatten().tolist()) == {0, 1}
    assert abs(hist[0].item() / hist.sum().item() - 0.5 / 0.8) < 0.04
    hist = _histogram(sampler, logits, SamplingParams(top_p=0.8, top_k=3))
    assert set(hist.nonzero().flatten().tolist()) <= {0, 1, 2}


def test_min_p(sampler):
    probs = torch.tensor([0.4, 0.3, 0.19, 0.11] + [0.0] * (V - 4))
    logits = probs.clamp_min(1e-12).log()[None]
    hist = _histogram(sampler, logits, SamplingParams(min_p=0.5))  # keep prob >= 0.2
    assert set(hist.nonzero().flatten().tolist()) == {0, 1}


def test_temperature_sharpens_and_flattens(sampler):
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(3))
    top = logits.argmax().item()
    cold = _histogram(sampler, logits, SamplingParams(temperature=0.05))
    hot = _histogram(sampler, logits, SamplingParams(temperature=5.0))
    mid = _histogram(sampler, logits, SamplingParams(temperature=1.0))
    assert cold[top] > mid[top] > hot[top]
    def entropy(h: torch.Tensor) -> float:
        f = h.float() / h.sum()
        return float(-(f[f > 0] * f[f > 0].log()).sum())

    assert entropy(hot) > entropy(mid) > entropy(cold)
    # At T=1 frequencies match softmax.
    assert torch.allclose(mid.float() / mid.sum(), logits[0].softmax(-1), atol=0.03)


def test_random_sampling_follows_distribution(sampler):
    logits = torch.tensor([[0.0, math.log(3.0)] + [-1e9] * (V - 2)])
    hist = _histogram(sampler, logits, SamplingParams())
    assert hist[2:].sum() == 0
    assert abs(hist[1].item() / hist.sum().item() - 0.75) < 0.03


def _run_steps(sampler: Sampler, rows_fn, steps: int, seeded_index: int) -> list[int]:
    """Decode `steps` tokens; returns the tokens of rows_fn's row `seeded_index` (logits fixed per step)."""
    gen = torch.Generator().manual_seed(99)
    step_logits = [torch.randn(16, V, generator=gen) for _ in range(steps)]
    rows = rows_fn()
    tokens = []
    for s in range(steps):
        lg = step_logits[s][: len(rows)]
        # The seeded row always sees the same logits (row 0 of the step's tensor).
        lg = torch.cat([lg[1:seeded_index + 1], lg[:1], lg[seeded_index + 1:]]) if seeded_index else lg
        out = sampler(lg, rows)
        for r, o in zip(rows, out):
            r.output_token_ids.append(o.token_id)
        tokens.append(out[seeded_index].token_id)
    return tokens


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(seed=42, temperature=1.5),
        SamplingParams(seed=42, temperature=0.8, top_k=20),
        SamplingParams(seed=42, temperature=0.8, top_p=0.9, min_p=0.01, presence_penalty=0.3),
    ],
)
def test_seed_reproducible_alone_and_in_batch(sampler, params):
    alone = _run_steps(sampler, lambda: [row(params.clone())], 12, 0)
    again = _run_steps(sampler, lambda: [row(params.clone())], 12, 0)
    assert alone == again
    assert len(set(alone)) > 1  # really random, not stuck on one token

    def batch() -> list[SamplingRow]:
        others = [
            row(SamplingParams(temperature=1.0)),
            row(SamplingParams(temperature=0.0)),
            row(SamplingParams(temperature=0.7, top_p=0.5, repetition_penalty=1.3)),
            row(SamplingParams(seed=7, top_k=4, logprobs=2)),
            row(SamplingParams(temperature=1.2, min_p=0.1, logit_bias={1: 2.0})),
        ]
        return others[:3] + [row(params.clone())] + others[3:]

    torch.manual_seed(0)
    in_batch = _run_steps(sampler, batch, 12, 3)
    assert in_batch == alone
    different_seed = _run_steps(sampler, lambda: [row(params.clone(seed=43))], 12, 0)
    assert different_seed != alone


def test_logprobs_from_raw_logits(sampler):
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(5)) * 2
    rows = [
        row(SamplingParams(temperature=0.0, logprobs=3, repetition_penalty=1.5), prompt=[1, 2]),
        row(SamplingParams(temperature=0.3, logprobs=5)),
        row(SamplingParams(temperature=0.0)),
    ]
    out = sampler(logits, rows)
    ref = torch.log_softmax(logits.float(), -1)
    for i, k in ((0, 3), (1, 5)):
        o = out[i]
        assert o.logprob == pytest.approx(ref[i, o.token_id].item(), abs=1e-6)
        top = ref[i].topk(k)
        items = list(o.top_logprobs.items())
        assert [t for t, _ in items[:k]] == top.indices.tolist()
        assert [lp.rank for _, lp in items[:k]] == list(range(1, k + 1))
        for (t, lp), v in zip(items, top.values.tolist()):
            assert lp.logprob == pytest.approx(v, abs=1e-6)
        assert o.token_id in o.top_logprobs
        expected_rank = 1 + int((ref[i] > ref[i, o.token_id]).sum())
        assert o.top_logprobs[o.token_id].rank == expected_rank
    assert out[2].logprob is None and out[2].top_logprobs is None


def test_sampled_token_outside_top_k_is_included(sampler):
    logits = torch.arange(V, dtype=torch.float32)[None] / 4  # token V-1 most likely
    out = sampler(logits, [row(SamplingParams(temperature=0.0, logprobs=2, logit_bias={0: 1000.0}))])[0]
    assert out.token_id == 0
    assert list(out.top_logprobs) == [V - 1, V - 2, 0]
    assert out.top_logprobs[0].rank == V
    ref = torch.log_softmax(logits, -1)[0]
    assert out.logprob == pytest.approx(ref[0].item(), abs=1e-6)
    zero = sampler(logits, [row(SamplingParams(temperature=0.0, logprobs=0))])[0]
    assert list(zero.top_logprobs) == [V - 1] and zero.top_logprobs[V - 1].rank == 1


def test_prompt_logprobs():
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(6))
    targets = [3, 9, 0, 63, 17]
    out = compute_prompt_logprobs(logits, targets, 2)
    ref = torch.log_softmax(logits, -1)
    assert len(out) == 5
    for i, (t, d) in enumerate(zip(targets, out)):
        assert d[t].logprob == pytest.approx(ref[i, t].item(), abs=1e-6)
        assert d[t].rank == 1 + int((ref[i] > ref[i, t]).sum())
        top = ref[i].topk(2)
        assert list(d)[:2] == top.indices.tolist()
        assert [d[j].rank for j in top.indices.tolist()] == [1, 2]
        assert len(d) == (2 if t in top.indices.tolist() else 3)
    assert compute_prompt_logprobs(logits[:0], [], 2) == []
    # Padded vocab: the padding takes no mass when vocab_size is given.
    padded = torch.cat([logits, torch.full((5, 8), 100.0)], -1)
    out_p = compute_prompt_logprobs(padded, targets, 2, vocab_size=V)
    assert out_p[0][3].logprob == pytest.approx(out[0][3].logprob, abs=1e-6)


def test_padded_vocab_never_sampled(sampler):
    logits = torch.randn(6, V + 16)
    logits[:, V:] = 1000.0
    rows = [
        row(SamplingParams(temperature=0.0, logprobs=2)),
        row(SamplingParams(logprobs=1)),
        row(SamplingParams(top_k=3)),
        row(SamplingParams(top_p=0.9)),
        row(SamplingParams(seed=3)),
        row(SamplingParams(min_p=0.2, repetition_penalty=1.2), prompt=[V + 3]),
    ]
    for _ in range(5):
        out = sampler(logits, rows)
        assert all(o.token_id < V for o in out)
        assert out[0].token_id == logits[0, :V].argmax().item()
        assert all(t < V for t in out[0].top_logprobs)
        ref = torch.log_softmax(logits[0, :V], -1)
        assert out[0].logprob == pytest.approx(ref[out[0].token_id].item(), abs=1e-6)


def test_rejects_mismatched_rows(sampler):
    with pytest.raises(ValueError):
        sampler(torch.zeros(2, V), [row(SamplingParams())])


def test_make_generator_accepts_any_int_seed():
    a = torch.empty(5).exponential_(generator=make_generator(-1))
    b = torch.empty(5).exponential_(generator=make_generator(-1))
    assert torch.equal(a, b)
    make_generator(2**70)


def _reference_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep mask by a full sort: the smallest prefix reaching top_p, plus ties of its last token."""
    desc = probs.sort(descending=True).values
    before = desc.cumsum(-1) - desc
    last = desc[(before < top_p) & (desc > 0)][-1]
    return probs >= last


@pytest.mark.parametrize("candidates, growth", [(256, 16), (4, 2), (1, 3)])
def test_top_p_candidate_rounds_match_full_sort(monkeypatch, candidates, growth):
    import vllm_cli.engine.sampler as sampler_mod

    monkeypatch.setattr(sampler_mod, "_TOP_P_CANDIDATES", candidates)
    monkeypatch.setattr(sampler_mod, "_TOP_P_GROWTH", growth)
    gen = torch.Generator().manual_seed(8)
    # Peaked and flat rows, so nuclei end in the first round, a later one, or need the full sort.
    probs = (torch.randn(12, V, generator=gen) * torch.linspace(0.1, 6, 12)[:, None]).softmax(-1)
    probs[3, 10:] = 0.0  # as if cut by top-k: the nucleus may end on zero-prob tokens
    probs[3] /= probs[3].sum()
    top_p = torch.tensor([0.05, 0.3, 0.5, 0.999999, 0.9, 0.95, 0.99, 0.7, 0.2, 0.6, 0.8, 0.999])
    kept = sampler_mod._top_p(probs.clone(), top_p) > 0
    for i in range(12):
        assert torch.equal(kept[i], _reference_top_p(probs[i], top_p[i].item())), i


@pytest.mark.parametrize("top_k", [0, 4000])
def test_seed_reproducible_with_large_nucleus(top_k):
    # Flat logits: the top-p nucleus spans most of the vocabulary (later rounds / full sort).
    big = Sampler(5000, [EOS])
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5000, generator=gen) * 0.1
    p = SamplingParams(seed=11, top_p=0.95, top_k=top_k)
    seeded = row(p)
    alone = [big(logits[:1], [seeded])[0].token_id for _ in range(4)]
    seeded = row(p)
    others = [row(SamplingParams(top_p=0.1)), row(SamplingParams()), row(SamplingParams(temperature=0.0))]
    mixed = [big(logits[:4], [seeded] + others)[0].token_id for _ in range(4)]
    assert alone == mixed and len(set(alone)) > 1


def test_penalties_accept_tensor_token_ids(sampler):
    logits = torch.zeros(1, V)
    logits[0, :3] = 2.0
    lists = row(SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5), prompt=[0], output=[1, 1])
    tensors = SamplingRow(lists.params, torch.tensor([0]), torch.tensor([1, 1]), None)
    assert torch.equal(_processed(sampler, logits, lists), _processed(sampler, logits, tensors))
