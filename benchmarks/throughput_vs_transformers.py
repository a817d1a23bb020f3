"""Offline throughput of vllm-cli's engine against transformers' batched `generate`, same
workload, same process, same dtype: N prompts of random token ids, fixed output length,
EOS ignored. Prints both figures and the ratio of output tokens/s.

    python benchmarks/throughput_vs_transformers.py --num-prompts 64 --input-len 128 --output-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--hf-batch-size", type=int, default=None, help="transformers' static batch (default: all)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()

    from vllm_cli import LLM, SamplingParams
    from vllm_cli.model_executor.model_source import resolve_model_source

    llm = LLM(args.model, dtype=args.dtype, seed=0, max_num_seqs=max(args.num_prompts, 1))
    vocab = llm.engine.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, vocab, (args.num_prompts, args.input_len), generator=g).tolist()
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)

    llm.generate([{"prompt_token_ids": p[:16]} for p in prompts[:2]], params.clone(max_tokens=4), use_tqdm=False)
    llm.engine.block_manager.reset_prefix_cache()
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    ours_s = time.perf_counter() - start
    ours_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    result = {"workload": vars(args), "torch_threads": torch.get_num_threads(),
              "vllm_cli": {"elapsed_s": ours_s, "output_tokens": ours_tokens, "output_tok_s": ours_tokens / ours_s}}
    print(f"vllm-cli:     {ours_tokens} tokens in {ours_s:.2f} s = {ours_tokens / ours_s:.1f} output tok/s")
    del llm

    if not args.skip_transformers:
        import transformers

        source = resolve_model_source(args.model)
        dtype = getattr(torch, args.dtype)
        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        model = transformers.AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs).eval()
        batch = args.hf_batch_size or args.num_prompts
        ids = torch.tensor(prompts)
        with torch.no_grad():
            model.generate(ids[:2, :16], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
            start = time.perf_counter()
            hf_tokens = 0
            for i in range(0, len(prompts), batch):
                chunk = ids[i:i + batch]
                out = model.generate(chunk, attention_mask=torch.ones_like(chunk), max_new_tokens=args.output_len,
                                     min_new_tokens=args.output_len, do_sample=False, pad_token_id=0)
                hf_tokens += (out.shape[1] - chunk.shape[1]) * chunk.shape[0]
            hf_s = time.perf_counter() - start
        result["transformers"] = {"elapsed_s": hf_s, "output_tokens": hf_tokens, "output_tok_s": hf_tokens / hf_s,
                                  "batch_size": batch}
        result["ratio"] = (ours_tokens / ours_s) / (hf_tokens / hf_s)
        print(f"transformers: {hf_tokens} tokens in {hf_s:.2f} s = {hf_tokens / hf_s:.1f} output tok/s "
              f"(static batch {batch})")
        print(f"ratio: {result['ratio']:.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
