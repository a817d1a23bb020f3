"""/v1/embeddings (`vllm-cli serve --runner pooling`) end to end: a tiny random Llama served by a
real server subprocess, its embeddings compared with transformers' (AutoModel last_hidden_state,
the same pooling, normalized) and with sentence-transformers' `encode` on a sentence-transformers
directory of the same weights; the openai client and LangChain's OpenAIEmbeddings unchanged; the
400s on the wrong runner, bad dimensions and bad input.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

from conftest import ServerProcess, launch_server

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris",
    "Retrieval-augmented generation embeds every chunk of every document, then searches by cosine similarity.",
]


def _copy_model(src: str, dst: Path, **config: object) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


def _start(model: Path, log: Path, *args: str) -> ServerProcess:
    server = launch_server(str(model), log, "--served-model-name", "emb", *args, kv_cache_memory="64MiB")
    assert httpx.get(f"{server.url}/health").status_code == 200
    return server


@pytest.fixture(scope="module")
def llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama, declared matryoshka (so `dimensions` may truncate it)."""
    return _copy_model(tiny_llama_dir, tmp_path_factory.mktemp("emb") / "llama", is_matryoshka=True)


@pytest.fixture(scope="module")
def st_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The same weights as a sentence-transformers model: mean pooling, then Normalize."""
    path = _copy_model(tiny_llama_dir, tmp_path_factory.mktemp("emb") / "st-llama")
    tok = json.loads((path / "tokenizer_config.json").read_text())
    tok["pad_token"] = tok.get("pad_token") or tok.get("eos_token")  # sentence-transformers pads its batches
    (path / "tokenizer_config.json").write_text(json.dumps(tok))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    (path / "2_Normalize").mkdir()
    return path


@pytest.fixture(scope="module")
def server(llama_dir, tmp_path_factory):
    s = _start(llama_dir, tmp_path_factory.mktemp("emb-server") / "log", "--runner", "pooling")
    yield s
    assert s.stop() == 0, s.log_tail()


def _hf_reference(model_dir: Path, ids: list[list[int]], pooling: str, dimensions: int | None = None) -> np.ndarray:
    """transformers' AutoModel, one unpadded input at a time: last_hidden_state pooled, truncated, normalized."""
    import transformers

    model = transformers.AutoModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for seq in ids:
            hidden = model(torch.tensor([seq])).last_hidden_state[0]
            vec = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[pooling]
            out.append(torch.nn.functional.normalize(vec[:dimensions], dim=-1).numpy())
    return np.stack(out)


def _tokenize(model_dir: Path, texts: list[str]) -> list[list[int]]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer(t)["input_ids"] for t in texts]


def _post(server: ServerProcess, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)


def _vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "emb"
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert all(d["object"] == "embedding" for d in body["data"])
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def test_batch_matches_transformers(server, llama_dir):
    """Inputs of different lengths in one request (batched by the scheduler): last token, normalized."""
    ids = _tokenize(llama_dir, TEXTS)
    assert len({len(i) for i in ids}) == len(ids)
    response = _post(server, {"model": "emb", "input": TEXTS})
    got = _vectors(response)
    np.testing.assert_allclose(got, _hf_reference(llama_dir, ids, "last"), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    n = sum(len(i) for i in ids)
    assert response.json()["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_token_ids_base64_and_dimensions(server, llama_dir):
    ids = _tokenize(llama_dir, TEXTS)
    as_text = _vectors(_post(server, {"input": TEXTS}))
    # Token ids, one list and a list of lists, give what the text gives.
    np.testing.assert_array_equal(_vectors(_post(server, {"input": ids})), as_text)
    alone = _vectors(_post(server, {"input": ids[1]}))  # another batch: float32 rounding may differ
    np.testing.assert_allclose(alone, as_text[1:2], atol=1e-6)
    # base64: little-endian float32, as OpenAI sends it; the same floats the float format gives.
    body = _post(server, {"input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, _vectors(_post(server, {"input": TEXTS[0]}))[0])
    # Matryoshka: truncated to 16, then normalized.
    got = _vectors(_post(server, {"input": TEXTS, "dimensions": 16}))
    assert got.shape == (3, 16)
    np.testing.assert_allclose(got, _hf_reference(llama_dir, ids, "last", 16), atol=2e-5, rtol=1e-4)


def test_openai_client_and_langchain(server, llama_dir):
    from langchain_openai import OpenAIEmbeddings

    expected = _hf_reference(llama_dir, _tokenize(llama_dir, TEXTS), "last")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY")
    result = client.embeddings.create(model="emb", input=TEXTS)  # the client asks for base64 by default
    np.testing.assert_allclose([d.embedding for d in result.data], expected, atol=2e-5, rtol=1e-4)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0

    embeddings = OpenAIEmbeddings(
        base_url=f"{server.url}/v1", api_key="EMPTY", model="emb", check_embedding_ctx_length=False
    )
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[1]), expected[1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("body", "status", "param", "match"),
    [
        ({"input": "x", "dimensions": 65}, 400, "dimensions", "hidden size 64"),
        ({"input": "x", "dimensions": 0}, 400, "dimensions", ""),
        ({"input": []}, 400, "input", "empty"),
        ({"input": ""}, 400, "input", "empty"),
        ({"input": [[]]}, 400, "input", "empty"),
        ({"input": [10**9]}, 400, "input", "token ids"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", ""),
        ({"input": "x", "model": "other"}, 404, "model", "does not exist"),
        ({}, 400, "input", ""),
    ],
)
def test_bad_requests(server, body, status, param, match):
    response = _post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and match in error["message"]


def test_generation_endpoints_refused_in_pooling_mode(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/embeddings" in spec["paths"] and "EmbeddingResponse" in spec["components"]["schemas"]
    for path, body in [
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ]:
        response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
        assert response.status_code == 400
        assert "--runner pooling" in response.json()["error"]["message"]


def test_sentence_transformers_dir_auto_detected(st_dir, tmp_path):
    """No --runner: modules.json makes it a pooling server; mean pooling + Normalize as
    sentence-transformers' own encode computes them; dimensions refused (not matryoshka)."""
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(st_dir), device="cpu").encode(TEXTS, batch_size=len(TEXTS))
    server = _start(st_dir, tmp_path / "log")
    try:
        got = _vectors(_post(server, {"input": TEXTS}))
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(got, _hf_reference(st_dir, _tokenize(st_dir, TEXTS), "mean"), atol=2e-5, rtol=1e-4)
        response = _post(server, {"input": "x", "dimensions": 8})
        assert response.status_code == 400 and "matryoshka" in response.json()["error"]["message"]
    finally:
        assert server.stop() == 0, server.log_tail()


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_chunked_prefill_pooling_in_process(st_dir, tmp_path, pooling):
    """Prompts longer than the step's token budget are pooled across chunks (mean: a running sum;
    CLS: the first chunk's first row; last: the last chunk's last row), batched with shorter ones."""
    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.llm_engine import LLMEngine
    from vllm_cli.pooling_params import PoolingParams

    model = tmp_path / "model"
    shutil.copytree(st_dir, model)
    mode = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, mode[pooling]: True}))
    engine = LLMEngine(EngineArgs(model=str(model), max_num_batched_tokens=8, num_kv_blocks=64, max_model_len=128))
    assert engine.runner_kind == "pooling" and engine.pooling.pooling_type == pooling.upper()
    ids = _tokenize(model, TEXTS)
    assert max(map(len, ids)) > 8  # chunked
    for i, prompt in enumerate(ids):
        engine.add_request(str(i), None, prompt_token_ids=prompt, pooling_params=PoolingParams())
    results = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            results[out.request_id] = out.outputs.data
    got = np.array([results[str(i)] for i in range(len(ids))], dtype=np.float32)
    np.testing.assert_allclose(got, _hf_reference(model, ids, pooling), atol=2e-5, rtol=1e-4)
    assert engine.block_manager.usage == 0  # every KV block freed once pooled
    with pytest.raises(ValueError, match="--runner pooling"):
        engine.add_request("gen", "hello")


def test_sentence_transformers_saved_base_model(tiny_llama_dir, tmp_path):
    """A directory sentence-transformers itself saved: a LlamaModel checkpoint (the trunk alone, tensor
    names without `model.`, no LM head), last-token pooling: auto-detected, and equal to its encode."""
    from sentence_transformers import SentenceTransformer, models

    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.llm import LLM
    from vllm_cli.engine.llm_engine import LLMEngine
    from vllm_cli.pooling_params import PoolingParams

    word = models.Transformer(tiny_llama_dir)
    word.tokenizer.pad_token = word.tokenizer.pad_token or word.tokenizer.eos_token
    pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="lasttoken")
    st_model = SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")
    saved = tmp_path / "saved"
    st_model.save(str(saved))
    assert json.loads((saved / "config.json").read_text())["architectures"] == ["LlamaModel"]
    # sentence-transformers 6 wraps text in the tokenizer's chat template (its "message" modality) when
    # the tokenizer has one; the server embeds text as given, as vLLM does: plain text on both sides.
    config = json.loads((saved / "sentence_bert_config.json").read_text())
    config.get("modality_config", {}).pop("message", None)
    (saved / "sentence_bert_config.json").write_text(json.dumps(config))
    expected = SentenceTransformer(str(saved), device="cpu").encode(TEXTS, batch_size=len(TEXTS))

    llm = LLM(str(saved), num_kv_blocks=64, max_model_len=128)  # the offline API: LLM.embed, as vLLM's
    assert llm.engine.runner_kind == "pooling" and llm.engine.pooling.pooling_type == "LAST"
    outputs = llm.embed(TEXTS, use_tqdm=False)
    np.testing.assert_allclose([o.outputs.data for o in outputs], expected, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="matryoshka"):
        llm.embed("x", PoolingParams(dimensions=8))
    with pytest.raises(ValueError, match="base model without an LM head"):
        LLMEngine(EngineArgs(model=str(saved), runner="generate", num_kv_blocks=64))


def test_embeddings_refused_by_a_generation_server(llama_dir, tmp_path):
    server = _start(llama_dir, tmp_path / "log", "--runner", "generate", "--max-model-len", "128")
    try:
        response = _post(server, {"input": "hello"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert "--runner pooling" in error["message"] and error["type"] == "invalid_request_error"
    finally:
        assert server.stop() == 0, server.log_tail()
