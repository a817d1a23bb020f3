"""Single-stream decode at full-size shapes, beside the memory-bandwidth floor (issue 19).

Real configs with dummy weights (benchmarks/configs/<name>/config.json, the hub's files as
published; `--load-format dummy`, so no tokenizer and no download): Llama-3.2-1B, Qwen2.5-1.5B,
Llama-3.2-3B. Each (model, format) runs in a fresh process:

  float32    --dtype float32  --quantization none
  bfloat16   --dtype bfloat16 --quantization none
  int8       --dtype float32  --quantization int8   (linears packed into Q8_0 groups of 32 at load)
  int4       --dtype float32  --quantization int4   (Q4_1 groups of 32)
  int8-bf16, int4-bf16: the same with --dtype bfloat16 (what stays float, the embedding and the LM
             head, is then bf16)
  int8-head, int4-head: int8 / int4 with --quantize-lm-head (the LM head, and a tied embedding with it, Q8_0)

One request at batch 1, --input-len prompt tokens (random ids), --output-len generated (greedy,
EOS ignored), every engine step timed: the decode rate is (OUT - 1) / (the steps after the first),
the figure `single_stream_vs_llamacpp.py` gets as (OUT-1) / (latency(OUT) - latency(1)). A short
warm-up request first; the best of --iters requests is kept.

Per row: decode tok/s; RSS after load (and its peak during load); the model's weight bytes (every
parameter and quantized block it holds, `model_weight_bytes`); the bytes a decode step reads (every
linear's weight and the LM head; of the embedding one row, unless the LM head is tied to it); the
bandwidth floor = those bytes / the read bandwidth this script measures (a torch sum over 1 GiB with
--threads threads, best of 5, before and after the runs); and tok/s as a fraction of the floor's
rate. For int8/int4, what the linears hold per weight (Q8_0: 34 bytes per 32 = 1.0625, Q4_1: 0.625)
and which layers stayed float.

  python benchmarks/full_size_shapes.py                                   # every model x the 4 formats
  python benchmarks/full_size_shapes.py --models llama-3.2-1b --formats int8 int4
  python benchmarks/full_size_shapes.py --max-gib 7     # rows estimated to need more are listed as pending
  python benchmarks/full_size_shapes.py --output-json full_size.json

Figures: benchmarks/RESULTS.md, "Full-size shapes, single stream (issue 19)".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from vllm_cli.benchmarks.report import cpu_description as cpu_name
from vllm_cli.benchmarks.report import read_bandwidth_gbs

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
MODELS = ("llama-3.2-1b", "qwen2.5-1.5b", "llama-3.2-3b")
# format -> (--dtype, --quantization)
FORMATS = {
    "float32": ("float32", "none"),
    "bfloat16": ("bfloat16", "none"),
    "int8": ("float32", "int8"),
    "int4": ("float32", "int4"),
    "int8-bf16": ("bfloat16", "int8"),
    "int4-bf16": ("bfloat16", "int4"),
    # the same with --quantize-lm-head: the LM head (and a tied embedding, one copy) in Q8_0
    "int8-head": ("float32", "int8"),
    "int4-head": ("float32", "int4"),
}
DEFAULT_FORMATS = ("float32", "bfloat16", "int8", "int4")
_BYTES_PER_WEIGHT = {"float32": 4.0, "bfloat16": 2.0, "int8": 34 / 32, "int4": 20 / 32}


def load_config(name: str) -> dict:
    with open(os.path.join(CONFIGS, name, "config.json")) as f:
        return json.load(f)


def parameter_counts(config: dict) -> tuple[int, int]:
    """(weights of the decoder layers' linears, weights of the embedding + an untied LM head) of a
    Llama/Qwen2-shaped config: what the memory estimate of a row needs before loading it."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads)
    attention = hidden * head_dim * (2 * heads + 2 * kv)  # q, o; k, v
    mlp = 3 * hidden * config["intermediate_size"]
    embedding = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp), embedding


def estimated_peak_gib(config: dict, fmt: str) -> float:
    """The RSS a row's load may reach: the weights as held (the LM head stays float and, tied or
    not, is a prepacked copy beside the embedding), plus the float32 random tensor the dummy loader
    fills the embedding from, plus ~1 GiB for torch, the KV pool and activations."""
    dtype, quantization = FORMATS[fmt]
    linears, _ = parameter_counts(config)
    table = config["vocab_size"] * config["hidden_size"]
    per_linear = _BYTES_PER_WEIGHT[quantization if quantization != "none" else dtype]
    held = linears * per_linear + 2 * table * _BYTES_PER_WEIGHT[dtype]
    transient = table * 4
    return (held + transient) / 2**30 + 1.0


# ------------------------------------------------------------------------------------ the child


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def bytes_read_per_token(model: torch.nn.Module) -> int:
    """Bytes a batch-1 decode step reads from the weights: every parameter and quantized part once
    (a prepacked CPU linear: its logical in x out weight), but of the token embedding one row
    unless the LM head reads the same tensor. Buffers that are not weights (rotary tables) are left out."""
    from vllm_cli.model_executor.layers.cpu_linear import CpuLinear
    from vllm_cli.model_executor.layers.quantization import QuantizedPart

    embedding = getattr(model, "embedding", None)
    lm_head = getattr(model, "lm_head", None)
    tables: dict[int, int] = {}  # the embedding's tensors: data_ptr -> bytes of one row
    if embedding is not None:
        for t in [*embedding.parameters(), *embedding.buffers()]:
            if t.dim() == 2 and t.numel():
                tables[t.data_ptr()] = t.shape[1] * t.element_size()
    if lm_head is not None:  # a tied LM head reads the whole table every step
        for t in [*lm_head.parameters(), *lm_head.buffers()]:
            tables.pop(t.data_ptr(), None)
    weights = list(model.parameters())
    weights += [b for m in model.modules() if isinstance(m, QuantizedPart) for b in m.buffers()]
    seen: set[int] = set()
    total = 0
    for t in weights:
        if t.device.type == "meta" or not t.numel() or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += tables.get(t.data_ptr(), t.numel() * t.element_size())
    for m in model.modules():
        if isinstance(m, CpuLinear):
            total += m.in_features * m.out_features * m.packed.element_size()
            if m.bias is not None and m.bias.data_ptr() not in seen:
                total += m.bias.numel() * m.bias.element_size()
    return total


def quantized_layout(model: torch.nn.Module) -> dict:
    """What --quantization did: the quantized parts by type, their bytes per weight, and every
    linear-like layer left float (by name)."""
    from vllm_cli.model_executor.layers.cpu_linear import CpuLinear
    from vllm_cli.model_executor.layers.linear import ParallelLinearBase
    from vllm_cli.model_executor.layers.quantization import QuantizedLinear, QuantizedPart, quantization_summary

    parts = {id(m): m for m in model.modules() if isinstance(m, QuantizedPart) and m.qtype is not None}
    quantized_bytes = sum(p.qweight.numel() for p in parts.values())
    quantized_weights = sum(p.rows * p.in_features for p in parts.values())
    float_linears = [
        name
        for name, m in model.named_modules()
        if isinstance(m, CpuLinear | torch.nn.Linear | ParallelLinearBase) and not isinstance(m, QuantizedLinear)
    ]
    return {
        "summary": quantization_summary(model),
        "quantized_layers": sum(isinstance(m, QuantizedLinear) for m in model.modules()),
        "quantized_weights": quantized_weights,
        "quantized_bytes_per_weight": quantized_bytes / quantized_weights if quantized_weights else None,
        "float_linears": float_linears,
    }


def run_child(spec: dict) -> dict:
    """One (model, format): load, time --iters single-stream requests, report."""
    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.llm_engine import LLMEngine
    from vllm_cli.model_executor.layers.quantization import model_weight_bytes
    from vllm_cli.sampling_params import SamplingParams

    dtype, quantization = FORMATS[spec["format"]]
    rss_before = _status_bytes("VmRSS")
    start = time.perf_counter()
    engine = LLMEngine.from_engine_args(
        EngineArgs(
            model=os.path.join(CONFIGS, spec["model"]),
            load_format="dummy",
            dtype=dtype,
            quantization=quantization,
            quantize_lm_head=spec["format"].endswith("-head"),
            skip_tokenizer_init=True,
            max_model_len=spec["input_len"] + spec["output_len"] + 16,
            kv_cache_memory="256MiB",
            enable_prefix_caching=False,
        )
    )
    load_s = time.perf_counter() - start
    rss_loaded, rss_peak = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    model = engine.model
    generator = torch.Generator().manual_seed(0)

    def one_request(output_len: int) -> tuple[list[float], list[float]]:
        """Wall and CPU seconds of each engine step of one request (step 0: the prefill)."""
        prompt = torch.randint(0, engine.vocab_size, (spec["input_len"],), generator=generator).tolist()
        params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=output_len, output_kind="final_only")
        engine.add_request(f"r{time.monotonic_ns()}", prompt, params, prompt_token_ids=prompt)
        wall, cpu = [], []
        while engine.has_unfinished_requests():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            engine.step()
            wall.append(time.perf_counter() - wall_start)
            cpu.append(time.process_time() - cpu_start)
        return wall, cpu

    one_request(4)  # warm-up: first calls, allocator
    best: tuple[list[float], list[float]] | None = None
    for _ in range(spec["iters"]):
        wall, cpu = one_request(spec["output_len"])
        if best is None or sum(wall[1:]) < sum(best[0][1:]):
            best = (wall, cpu)
    assert best is not None
    wall, cpu = best
    decode_s = sum(wall[1:])
    result = {
        "model": spec["model"],
        "format": spec["format"],
        "dtype": dtype,
        "quantization": quantization,
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "decode_tok_s": (len(wall) - 1) / decode_s,
        "prefill_s": wall[0],
        "decode_cpu_ms_per_token": sum(cpu[1:]) / (len(cpu) - 1) * 1e3,
        "rss_before_load": rss_before,
        "rss_after_load": rss_loaded,
        "rss_peak_load": rss_peak,
        "weight_bytes": model_weight_bytes(model),
        "bytes_per_token": bytes_read_per_token(model),
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    if quantization != "none":
        result["quantized"] = quantized_layout(model)
    engine.shutdown()
    return result


# ----------------------------------------------------------------------------------- the parent


def run_row(model: str, fmt: str, args: argparse.Namespace) -> dict:
    spec = {"model": model, "format": fmt, "input_len": args.input_len, "output_len": args.output_len}
    spec["iters"] = args.iters
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"model": model, "format": fmt, "error": " | ".join(tail) or f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def table(rows: list[dict], bandwidth: float) -> str:
    """Markdown. "by CPU time": 1000 / the CPU ms of a decode step, with one thread only (on a shared
    machine the wall clock counts the time the process waited for a core; CPU time does not)."""
    lines = [
        "| model | format | decode tok/s (by CPU time) | RSS after load GB (peak, growth) | weight GB "
        "| read per token GB | floor ms/token | floor tok/s | fraction of floor (by CPU time) | linears |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r or "pending" in r:
            why = r.get("pending") or f"failed: {r['error']}"
            lines.append(f"| {r['model']} | {r['format']} | {why} | | | | | | | |")
            continue
        floor_s = r["bytes_per_token"] / (bandwidth * 1e9)
        rate, fraction = f"{r['decode_tok_s']:.2f}", f"{r['decode_tok_s'] * floor_s:.2f}"
        if r["threads"] == 1:
            cpu_rate = 1e3 / r["decode_cpu_ms_per_token"]
            rate, fraction = f"{rate} ({cpu_rate:.2f})", f"{fraction} ({cpu_rate * floor_s:.2f})"
        q = r.get("quantized")
        if q is None:
            linears = "float"
        else:
            floats = [n for n in q["float_linears"] if n]
            linears = f"{q['summary']}; {q['quantized_bytes_per_weight']:.4f} B/weight"
            linears += f"; float: {', '.join(floats) or 'none'}"
        growth = r["rss_after_load"] - r["rss_before_load"]
        rss = f"{_gb(r['rss_after_load'])} ({_gb(r['rss_peak_load'])}, {_gb(growth)})"
        lines.append(
            f"| {r['model']} | {r['format']} | {rate} | {rss} | {_gb(r['weight_bytes'])} | {_gb(r['bytes_per_token'])} "
            f"| {floor_s * 1e3:.1f} | {1 / floor_s:.2f} | {fraction} | {linears} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(os.listdir(CONFIGS)), default=list(MODELS))
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(DEFAULT_FORMATS))
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--iters", type=int, default=2, help="timed requests per row; the fastest kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gib", type=float, default=None, help="skip rows estimated to need more RSS")
    parser.add_argument("--output-json", help="also write every row here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return

    torch.set_num_threads(args.threads)
    bandwidth = read_bandwidth_gbs()
    print(f"CPU: {cpu_name()}; {args.threads} threads; batch 1, {args.input_len} in / {args.output_len} out")
    print(f"read bandwidth (torch sum over 1 GiB, {args.threads} threads): {bandwidth:.1f} GB/s", flush=True)
    rows = []
    for model in args.models:
        config = load_config(model)
        for fmt in args.formats:
            need = estimated_peak_gib(config, fmt)
            if args.max_gib is not None and need > args.max_gib:
                rows.append({"model": model, "format": fmt, "pending": f"pending (needs ~{need:.1f} GiB)"})
                print(f"{model} {fmt}: skipped, needs ~{need:.1f} GiB > --max-gib {args.max_gib}", flush=True)
                continue
            load = os.getloadavg()[0]
            row = run_row(model, fmt, args)
            row["load_average"] = load
            rows.append(row)
            figure = f"{row['decode_tok_s']:.2f} tok/s" if "decode_tok_s" in row else row["error"]
            print(f"{model} {fmt}: {figure} (load average {load:.1f})", flush=True)
            if args.output_json:  # as it goes: a long run that is stopped keeps its rows
                write_json(args.output_json, rows, bandwidth)
    bandwidth_after = read_bandwidth_gbs()
    bandwidth = max(bandwidth, bandwidth_after)
    print(f"read bandwidth after the runs: {bandwidth_after:.1f} GB/s; the floor uses the best, {bandwidth:.1f}\n")
    print(table(rows, bandwidth))
    if args.output_json:
        write_json(args.output_json, rows, bandwidth)


def write_json(path: str, rows: list[dict], bandwidth: float) -> None:
    with open(path, "w") as f:
        json.dump({"cpu": cpu_name(), "read_bandwidth_gbs": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
