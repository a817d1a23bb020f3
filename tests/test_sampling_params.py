"""SamplingParams: vLLM defaults, normalisation and ValueErrors that name the field."""

from __future__ import annotations

import pytest

from vllm_cli.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 0}, "n"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"seed": "7"}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"output_kind": "stream"}, "output_kind"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.max_tokens == 16 and p.min_tokens == 0 and p.logprobs is None and p.seed is None
    assert p.stop == [] and p.stop_token_ids == [] and not p.ignore_eos
    assert p.output_kind == "cumulative"


def test_normalisation():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(logit_bias={"5": "1.5"}).logit_bias == {5: 1.5}
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(min_tokens=3, max_tokens=3).min_tokens == 3


def test_greedy_property():
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-4).greedy
    assert not SamplingParams().greedy


def test_clone_is_independent_and_revalidates():
    p = SamplingParams(stop=["x"], stop_token_ids=[1], logit_bias={3: 1.0}, seed=5)
    q = p.clone(temperature=0.5)
    assert q.temperature == 0.5 and p.temperature == 1.0
    assert (q.stop, q.stop_token_ids, q.logit_bias, q.seed) == (["x"], [1], {3: 1.0}, 5)
    q.stop.append("y")
    q.stop_token_ids.append(2)
    q.logit_bias[4] = 2.0
    assert p.stop == ["x"] and p.stop_token_ids == [1] and p.logit_bias == {3: 1.0}
    with pytest.raises(ValueError, match="top_p"):
        p.clone(top_p=2.0)
