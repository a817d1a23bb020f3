"""The on-disk GGUF metadata cache (config, tokenizer, tensor-name map) and the fast GGUF tensor reader."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vllm_cli.model_executor import gguf, weight_utils
from vllm_cli.model_executor.gguf import CACHE_DIR_ENV, gguf_cache_dir, gguf_cache_root
from vllm_cli.model_executor.model_source import load_hf_config, resolve_model_source
from vllm_cli.tokenizer import apply_chat_template, get_eos_token_ids, get_tokenizer, resolve_chat_template

TEXTS = [
    "Hello world",
    "The café serves 日本語 and émoji 👍🏽🎉 too",
    "  leading spaces\n\n\ttabs and newlines  ",
    "<|im_start|>user\nspecial tokens as text<|im_end|>",
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi 👋 there!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "日本語?"},
]
CONFIG_FIELDS = [
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "rope_parameters", "name_or_path",
]


def _spy_from_pretrained(monkeypatch, calls: list) -> None:
    """Record (class, gguf_file) of every AutoConfig/AutoTokenizer.from_pretrained call."""
    import transformers

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("gguf_file")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)


def _entry(cache_root: Path, gguf_path: str) -> Path:
    entries = list(cache_root.iterdir())
    assert [e.name for e in entries] == [os.path.basename(gguf_cache_dir(gguf_path))]
    return entries[0]


@pytest.fixture(scope="module")
def loads(smollm2_gguf_path, tmp_path_factory):
    """Load config and tokenizer twice with an empty cache: the first load converts, the second reads the cache."""
    cache = tmp_path_factory.mktemp("gguf-cache")
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_DIR_ENV, str(cache))
        _spy_from_pretrained(mp, calls)
        source = resolve_model_source(smollm2_gguf_path)
        cold_config = load_hf_config(source)
        cold_tokenizer = get_tokenizer(source.path, source.gguf_file)
        cold_calls = list(calls)
        calls.clear()
        warm_config = load_hf_config(source)
        warm_tokenizer = get_tokenizer(source.path, source.gguf_file)
        warm_calls = list(calls)
    return SimpleNamespace(cache=cache, source=source, cold_calls=cold_calls, warm_calls=warm_calls,
                           cold_config=cold_config, warm_config=warm_config,
                           cold_tokenizer=cold_tokenizer, warm_tokenizer=warm_tokenizer)


def test_first_load_fills_the_cache(loads, smollm2_gguf_path):
    gguf_file = os.path.basename(smollm2_gguf_path)
    assert ("AutoConfig", gguf_file) in loads.cold_calls and ("AutoTokenizer", gguf_file) in loads.cold_calls
    entry = _entry(loads.cache, smollm2_gguf_path)
    st = os.stat(smollm2_gguf_path)
    assert entry.name == f"SmolLM2-135M-Instruct.Q4_1-{st.st_size}-{st.st_mtime_ns}"
    config = json.loads((entry / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (entry / "tokenizer").iterdir()}
    assert not [p for p in entry.rglob("*") if ".tmp-" in p.name]  # no leftovers of the atomic writes


def test_second_load_reads_the_cache(loads):
    # Nothing reads the gguf again: no from_pretrained(..., gguf_file=...) call at all.
    assert loads.warm_calls and all(gguf is None for _, gguf in loads.warm_calls)


def test_cached_config_matches(loads):
    cold, warm = loads.cold_config, loads.warm_config
    assert type(warm) is type(cold)
    for field in CONFIG_FIELDS:
        assert getattr(warm, field) == getattr(cold, field), field
    assert warm.rope_parameters["rope_theta"] == 100000.0 and warm.eos_token_id == 2
    assert getattr(warm, "quantization_config", None) is None
    volatile = {"transformers_version", "_name_or_path"}
    assert {k: v for k, v in warm.to_dict().items() if k not in volatile} == {
        k: v for k, v in cold.to_dict().items() if k not in volatile}


def test_cached_tokenizer_matches(loads):
    cold, warm = loads.cold_tokenizer, loads.warm_tokenizer
    assert type(warm) is type(cold) and len(warm) == len(cold)
    for text in TEXTS:
        ids = cold.encode(text)
        assert warm.encode(text) == ids, text
        assert warm.decode(ids) == cold.decode(ids)
        assert warm.decode(ids, skip_special_tokens=True) == cold.decode(ids, skip_special_tokens=True)
    assert warm.chat_template == cold.chat_template and warm.chat_template
    assert warm.eos_token == cold.eos_token == "<|im_end|>"
    assert warm.special_tokens_map == cold.special_tokens_map and warm.all_special_ids == cold.all_special_ids
    assert get_eos_token_ids(warm, loads.warm_config) == get_eos_token_ids(cold, loads.cold_config)
    template, _ = resolve_chat_template(warm, None)
    assert template == resolve_chat_template(cold, None)[0]
    assert apply_chat_template(warm, MESSAGES, template) == apply_chat_template(cold, MESSAGES, template)
    assert warm.name_or_path == cold.name_or_path


def test_tensor_map_is_cached(loads, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(loads.cache))
    real_name_map = gguf._gguf_name_map
    built = []
    monkeypatch.setattr(gguf, "_gguf_name_map", lambda *a: built.append(1) or real_name_map(*a))
    # Both iterators start lazily: the first builds and saves the map, the second must read it.
    first = weight_utils.iterate_weights(loads.source, hf_config=loads.cold_config)
    second = weight_utils.iterate_weights(loads.source, hf_config=loads.warm_config)
    n = 0
    for (name_a, a), (name_b, b) in zip(first, second, strict=True):
        assert name_a == name_b and torch.equal(a, b), name_a
        n += 1
    assert n > 200 and built == [1]
    assert (_entry(loads.cache, loads.source.gguf_path) / "tensor_map.json").is_file()


def test_tensor_map_not_used_for_another_config(loads, monkeypatch):
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS

    monkeypatch.setenv(CACHE_DIR_ENV, str(loads.cache))
    gguf._gguf_tensor_map(loads.source.gguf_path, loads.warm_config,
                          TENSOR_PROCESSORS["llama"](config=loads.warm_config.to_dict()), "llama", 30)
    real_name_map = gguf._gguf_name_map
    built = []
    monkeypatch.setattr(gguf, "_gguf_name_map", lambda *a: built.append(1) or real_name_map(*a))
    config = type(loads.warm_config).from_dict({**loads.warm_config.to_dict(), "num_hidden_layers": 2})
    processor = TENSOR_PROCESSORS["llama"](config=config.to_dict())
    names, shapes = gguf._gguf_tensor_map(loads.source.gguf_path, config, processor, "llama", 2)
    assert built == [1]  # the entry was made for the 30-layer config: a miss
    assert "blk.1.attn_q.weight" in names and "blk.2.attn_q.weight" not in names
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == torch.Size([576, 576])


def test_read_gguf_matches_gguf_reader(smollm2_gguf_path):
    fast = gguf.read_gguf(smollm2_gguf_path)
    reference = gguf._read_gguf_with_reader(smollm2_gguf_path)
    assert [t.name for t in fast.tensors] == [t.name for t in reference.tensors]
    for a, b in zip(fast.tensors, reference.tensors):
        assert a.tensor_type == b.tensor_type and a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
        assert np.array_equal(a.data, b.data), a.name
    assert {k: v for k, v in reference.metadata.items() if not k.startswith("GGUF.")} == fast.metadata
    assert fast.metadata["general.architecture"] == "llama" and fast.metadata["llama.block_count"] == 30


def test_unwritable_cache_dir_still_loads(loads, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable even for root: the cache root cannot be created
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    # The conversions themselves are tested above; serve their results so that only the cache writes run.
    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: loads.cold_config)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, **k: loads.cold_tokenizer if k.get("gguf_file") else
                        pytest.fail("the cache cannot hold a tokenizer"))
    config = load_hf_config(loads.source)
    tokenizer = get_tokenizer(loads.source.path, loads.source.gguf_file)
    assert config is loads.cold_config and tokenizer is loads.cold_tokenizer
    name, tensor = next(weight_utils.iterate_weights(loads.source, hf_config=config))
    assert name and tensor.numel()
    assert blocker.read_text() == "not a directory"


def test_damaged_or_stale_entry_is_rebuilt(loads, tmp_path, monkeypatch, smollm2_gguf_path):
    import shutil

    import transformers

    cache = tmp_path / "cache"
    shutil.copytree(loads.cache, cache)
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    entry = _entry(cache, smollm2_gguf_path)
    (entry / "config.json").write_text("{not json")
    stamp = entry / "tokenizer" / "vllm_cli_cache.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "transformers": "0.0.0"}))
    gguf_calls: list = []

    def fake(result):
        return lambda *a, **k: (k.get("gguf_file") and gguf_calls.append(k["gguf_file"])) or result

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake(loads.cold_config))
    original_tokenizer_from_pretrained = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, **k: (gguf_calls.append(k["gguf_file"]) or loads.cold_tokenizer)
                        if k.get("gguf_file") else original_tokenizer_from_pretrained(path, **k))
    assert load_hf_config(loads.source) is loads.cold_config
    assert get_tokenizer(loads.source.path, loads.source.gguf_file) is loads.cold_tokenizer
    assert len(gguf_calls) == 2  # both entries were rejected and converted again...
    assert json.loads((entry / "config.json").read_text())["model_type"] == "llama"  # ...and rewritten
    assert json.loads(stamp.read_text())["transformers"] == transformers.__version__
    gguf_calls.clear()
    assert load_hf_config(loads.source).to_dict()["num_hidden_layers"] == 30
    assert get_tokenizer(loads.source.path, loads.source.gguf_file).encode(TEXTS[1]) == \
        loads.cold_tokenizer.encode(TEXTS[1])
    assert gguf_calls == []


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert gguf_cache_root() == str(tmp_path / "mine")
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache_root() == str(tmp_path / "xdg" / "vllm-cli" / "gguf")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache_root() == str(tmp_path / "home" / ".cache" / "vllm-cli" / "gguf")
    assert gguf_cache_dir(str(tmp_path / "missing.gguf")) is None
