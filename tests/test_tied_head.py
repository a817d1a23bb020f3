"""A tied LM head and its embedding hold one copy of the vocabulary matrix on the CPU: the embedding reads
its rows from the head's packed weight (CpuLinear.lookup, kernels/embedding_gather.c). Against the rows
themselves, and end to end against the unshared path (the same load with the embedding keeping its own
weight): the same greedy tokens and the same logprobs, bit for bit."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_checkpoint, tiny_config
from torch import nn
from vllm_cli.kernels import cpu as cpu_kernels

from vllm_cli import LLM, SamplingParams
from vllm_cli.model_executor.layers.cpu_linear import CpuLinear, cpu_linear_kinds
from vllm_cli.model_executor.layers.linear import ParallelLMHead, VocabParallelEmbedding
from vllm_cli.model_executor.layers.quantization import model_weight_bytes

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="the CPU kernels are not built")

DTYPES = [torch.float32, torch.bfloat16]
# vocabulary not a multiple of the 32-row panel; an odd width (bfloat16 pads k to pairs)
VOCAB = 1003


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1003, 48), (70, 33), (32, 1)], ids=["vocab", "odd-width", "one-column"])
def test_lookup_returns_the_weights_rows_from_each_readable_layout(dtype, shape):
    torch.manual_seed(0)
    linear = nn.Linear(shape[1], shape[0], bias=False).to(dtype)
    ids = torch.tensor([[0, shape[0] - 1, 31], [min(32, shape[0] - 1), 5, 0]])
    readable = [kind for kind in cpu_linear_kinds(dtype) if kind in ("fgemm", "matmul")]
    assert "fgemm" in readable  # the CPU kernels are built: our kind is offered
    for kind in cpu_linear_kinds(dtype):
        packed = CpuLinear(linear, kind)
        assert packed.has_rows == (kind in readable)
        if not packed.has_rows:
            continue
        rows = packed.lookup(ids)
        assert rows.dtype == dtype and rows.shape == (2, 3, shape[1]) and rows.is_contiguous()
        torch.testing.assert_close(rows, linear.weight[ids], rtol=0, atol=0)
        # a fresh tensor: the Llama trunk adds the first residual into the embedding's output in place
        assert rows.untyped_storage().data_ptr() != packed.packed.untyped_storage().data_ptr()


def test_an_id_outside_the_vocabulary_is_an_index_error():
    packed = CpuLinear(nn.Linear(16, 40, bias=False), "fgemm")
    with pytest.raises(IndexError, match="index 40 is out of range for an embedding of 40 rows"):
        packed.lookup(torch.tensor([3, 40]))
    with pytest.raises(IndexError, match="index -1"):
        packed.lookup(torch.tensor([-1]))


@pytest.fixture(params=[(1, 0), (2, 1)], ids=["tp1", "tp2-rank1"])
def tp_world(request, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """A simulated place in a tensor-parallel group (the layers size their shards from it)."""
    from vllm_cli.distributed import parallel_state as ps

    monkeypatch.setattr(ps._STATE, "world_size", request.param[0])
    monkeypatch.setattr(ps._STATE, "rank", request.param[1])
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
def test_the_re_layout_ties_the_embedding_shard_to_the_packed_head(tp_world, dtype):
    from vllm_cli.model_executor.layers.cpu_linear import optimize_linears_for_cpu

    model = nn.Module()
    model.embedding = VocabParallelEmbedding(VOCAB, 48).to(dtype)
    model.lm_head = ParallelLMHead(48, VOCAB).to(dtype)
    model.lm_head.weight = model.embedding.weight  # as DecoderForCausalLM ties them
    full = torch.randn(VOCAB, 48).to(dtype)
    model.embedding.load_weight("weight", full)
    shard = model.embedding.weight.detach().clone()
    optimize_linears_for_cpu(model)
    assert isinstance(model.lm_head, CpuLinear) and model.lm_head.kind == "fgemm"
    assert model.embedding.weight.numel() == 0 and model.embedding.weight.dtype == dtype  # its storage is gone
    rows = model.embedding.rows(torch.arange(shard.shape[0]))  # this rank's padded shard, local ids
    torch.testing.assert_close(rows, shard, rtol=0, atol=0)
    start, end = model.embedding.vocab_start, model.embedding.vocab_end
    torch.testing.assert_close(rows[: end - start], full[start:end], rtol=0, atol=0)


def test_an_untied_head_leaves_the_embedding_its_weight():
    from vllm_cli.model_executor.layers.cpu_linear import optimize_linears_for_cpu

    model = nn.Module()
    model.embedding = VocabParallelEmbedding(VOCAB, 48)
    model.lm_head = ParallelLMHead(48, VOCAB)
    optimize_linears_for_cpu(model)
    assert model.embedding.row_lookup is None and model.embedding.weight.shape == (VOCAB, 48)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-tied")
    return build_tiny_checkpoint(path, tiny_config("llama_tied_mha", VOCAB), seed=2)


def _run(path: str, dtype: str, quantization: str = "auto", **kwargs):
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=64, dtype=dtype, quantization=quantization, **kwargs)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (5, 37, 12)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)
    outs = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)]
    model = llm.engine.model
    return model, [(o.token_ids, [sorted(step.items()) for step in o.logprobs]) for o in outs]


@pytest.mark.parametrize(
    "dtype,quantization",
    [("float32", "auto"), ("bfloat16", "auto"), ("float32", "int8")],
    ids=["float32", "bfloat16", "int8-float-head"],
)
def test_a_tied_model_holds_one_copy_and_generates_the_same(tied_checkpoint, dtype, quantization, monkeypatch):
    shared_model, shared = _run(tied_checkpoint, dtype, quantization)
    with monkeypatch.context() as patch:
        # the same load, every linear on the same kernel, the embedding keeping its own weight
        patch.setattr(VocabParallelEmbedding, "read_rows_from", lambda self, lookup: None)
        unshared_model, unshared = _run(tied_checkpoint, dtype, quantization)

    assert shared == unshared  # greedy tokens and top-5 logprobs of every step, exactly

    element = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    vocab_bytes = VOCAB * 48 * element
    embedding = shared_model.embedding
    assert embedding.row_lookup is not None and embedding.weight.numel() == 0
    assert unshared_model.embedding.row_lookup is None and unshared_model.embedding.weight.shape == (VOCAB, 48)
    assert model_weight_bytes(unshared_model) - model_weight_bytes(shared_model) == vocab_bytes
    # no tensor of the model but the head's packed weight holds a vocabulary's worth of storage
    head_storage = shared_model.lm_head.packed.untyped_storage()
    big = [
        name
        for name, tensor in [*shared_model.named_parameters(), *shared_model.named_buffers()]
        if tensor.untyped_storage().nbytes() >= vocab_bytes
        and tensor.untyped_storage().data_ptr() != head_storage.data_ptr()
    ]
    assert big == []


# --------------------------------------------------------------------------- --quantize-lm-head


def test_quantize_lm_head_needs_int8_or_int4():
    from vllm_cli.config import EngineArgs

    EngineArgs(quantization="int4", quantize_lm_head=True)
    with pytest.raises(ValueError, match="quantize_lm_head needs quantization int8 or int4"):
        EngineArgs(quantization="auto", quantize_lm_head=True)


@pytest.fixture(scope="module")
def tied_qwen2_checkpoint(tmp_path_factory) -> str:
    """Tied, and 64 wide: whole Q8_0 blocks (the Llama above is 48 wide, which int8/int4 leave float)."""
    path = tmp_path_factory.mktemp("tiny-tied-qwen2")
    return build_tiny_checkpoint(path, tiny_config("qwen2", VOCAB), seed=2)


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantize_lm_head_packs_a_tied_head_and_its_embedding_once_in_q8_0(tied_qwen2_checkpoint, quantization):
    from vllm_cli.model_executor.layers.quantization import QuantizedEmbedding, QuantizedLinear, part_list

    float_head_model, float_head = _run(tied_qwen2_checkpoint, "float32", quantization)
    model, quantized_head = _run(tied_qwen2_checkpoint, "float32", quantization, quantize_lm_head=True)
    assert isinstance(model.lm_head, QuantizedLinear) and isinstance(model.embedding, QuantizedEmbedding)
    assert model.lm_head.parts is model.embedding.parts  # one copy of the blocks
    (_, part), = part_list(model.lm_head.parts)
    assert part.qtype == "q8_0" and part.qweight.shape == (VOCAB, 64 // 32 * 34)
    # the vocabulary matrix was one float32 copy (the head's, packed in whole panels: the embedding reads it),
    # now Q8_0's 34 bytes per 32 weights
    float_head_bytes = float_head_model.lm_head.packed.nbytes
    assert float_head_bytes == -(-VOCAB // 32) * 32 * 64 * 4
    assert model_weight_bytes(float_head_model) - model_weight_bytes(model) == float_head_bytes - part.qweight.numel()
    # Q8_0's rounding moves the logprobs: of the head, and of the embedding rows every layer starts from (these
    # random 0.2-scale weights amplify that through the layers): the same first token, its step's top-5 close.
    # That each kernel equals "dequantize, then float matmul / lookup" is tests/test_quantization.py's.
    for (tokens, logprobs), (ref_tokens, ref_logprobs) in zip(quantized_head, float_head, strict=True):
        assert tokens[0] == ref_tokens[0]
        got, expected = dict(logprobs[0]), dict(ref_logprobs[0])
        for token in set(got) & set(expected):
            assert got[token].logprob == pytest.approx(expected[token].logprob, abs=0.25)


def test_quantize_lm_head_leaves_an_untied_embedding_float(tmp_path):
    from vllm_cli.model_executor.layers.quantization import QuantizedLinear, part_list

    path = build_tiny_checkpoint(tmp_path, tiny_config("llama", VOCAB), seed=2)
    model, _ = _run(path, "bfloat16", "int4", quantize_lm_head=True)
    assert isinstance(model.lm_head, QuantizedLinear) and type(model.embedding) is VocabParallelEmbedding
    assert [part.qtype for _, part in part_list(model.lm_head.parts)] == ["q8_0"]
    assert model.embedding.weight.shape == (VOCAB, 64) and model.embedding.weight.dtype == torch.bfloat16
