"""The CPU kernels built with the current flags (kernels/cpu.py's _CFLAGS) vs a baseline flag set
(default: the -ffast-math build they replaced): are the outputs bit-identical, and how fast are
decode attention and RMSNorm, alternated in one process.

Outputs are computed in a fresh process per flag set: a -ffast-math library turns on flush-to-zero
for the process that loads it, which would change the other library's results too.

    python benchmarks/cpu_kernel_flags.py [--baseline-flags "-O3 ... -ffast-math ..."] [--repeats 30]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from conftest import paged_kv  # noqa: E402

from vllm_cli.kernels import cpu  # noqa: E402

FAST_MATH = "-O3 -mprefer-vector-width=512 -ffast-math -fPIC -shared -std=c11"
ATTENTION_CASES = [((9, 3), 64), ((4, 4), 80), ((8, 1), 128), ((6, 2), 64)]


def kernel_outputs() -> dict[str, torch.Tensor]:
    """Every kernel on fixed inputs (both dtypes; ALiBi, a window, many-chunk contexts)."""
    g = torch.Generator().manual_seed(1234)
    results = {}
    for dtype in cpu.DTYPES:
        for width in (576, 64, 1001, 4096, 17):
            wide = torch.randn(37, width + 37, generator=g).to(dtype) * 3
            results[f"rms_norm/{dtype}/{width}"] = cpu.rms_norm(
                wide[:, 5 : 5 + width], torch.randn(width, generator=g).to(dtype), 1e-5
            )
        for head_dim, rot in [(64, 64), (128, 128), (80, 80), (64, 32)]:
            qk = torch.randn(29, 8, head_dim, generator=g).to(dtype)
            cos, sin = (torch.randn(29, rot // 2, generator=g).to(dtype) for _ in range(2))
            results[f"rotary/{dtype}/{head_dim}/{rot}"] = cpu.rotary_neox_(qk, cos, sin, rot)
        for (nh, nkv), hd in ATTENTION_CASES:
            for alibi, window in [(False, None), (True, None), (False, 21)]:
                for chunk in (cpu.DECODE_CHUNK, 7):
                    ctx = [1, 300, 517, 2, 45, 16, 33]
                    k, v, tables = paged_kv(g, ctx, 16, nkv, hd, dtype)
                    k[:16] = v[:16] = 0
                    q = torch.randn(len(ctx), nh, hd, generator=g).to(dtype)
                    slopes = torch.rand(nh, generator=g) if alibi else None
                    lens = torch.tensor(ctx, dtype=torch.int32)
                    key = f"attention/{dtype}/{nh}q{nkv}kv{hd}/alibi={alibi}/window={window}/chunk={chunk}"
                    results[key] = cpu.paged_decode_attention(q, k, v, tables, lens, 16, hd**-0.5, slopes, window, chunk)
    return results


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-flags", default=FAST_MATH)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--outputs-only", default=None, help=argparse.SUPPRESS)  # child: FLAGS=PATH
    args = parser.parse_args()
    if args.outputs_only:
        flags, path = args.outputs_only.rsplit("=", 1)
        if flags:
            cpu._CFLAGS = flags.split()
        assert cpu.load() is not None
        torch.save(kernel_outputs(), path)
        return

    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in (("baseline", args.baseline_flags), ("current", "")):
            path = os.path.join(tmp, f"{name}.pt")
            subprocess.run([sys.executable, __file__, "--outputs-only", f"{flags}={path}"], check=True)
            outputs[name] = torch.load(path)
    base, cur = outputs["baseline"], outputs["current"]
    differ = sorted(k for k in base if not torch.equal(_bits(base[k]), _bits(cur[k])))
    kinds = sorted({"/".join(k.split("/")[:2]) for k in differ})
    max_diff = {kind: max(float((base[k].float() - cur[k].float()).abs().max()) for k in differ if k.startswith(kind))
                for kind in kinds}

    cc = cpu._compiler()
    assert cc is not None
    current_flags = list(cpu._CFLAGS)
    functions = {}
    for name, flags in (("baseline", args.baseline_flags.split()), ("current", current_flags)):
        cpu._CFLAGS = flags
        library = ctypes.CDLL(cpu._build(cc))
        attention, norm = library.paged_decode_attention_f32, library.rms_norm_f32
        attention.argtypes, attention.restype = cpu._SIGNATURES["paged_decode_attention"], None
        norm.argtypes, norm.restype = cpu._SIGNATURES["rms_norm"], None
        functions[name] = (attention, norm)
    g = torch.Generator().manual_seed(0)
    ctx = [1000] * 8
    k, v, tables = paged_kv(g, ctx, 16, 3, 64, torch.float32)
    k[:16] = v[:16] = 0
    q, lens = torch.randn(8, 9, 64, generator=g), torch.tensor(ctx, dtype=torch.int32)
    x, w = torch.randn(64, 576, generator=g), torch.randn(576, generator=g)
    out = torch.empty_like(x)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in functions}
    for _ in range(args.repeats):
        for name, (attention, norm) in functions.items():
            cpu._kernels[("paged_decode_attention", torch.float32)] = attention
            cpu._kernels[("rms_norm", torch.float32)] = norm
            start = time.perf_counter()
            for _ in range(10):
                cpu.paged_decode_attention(q, k, v, tables, lens, 16, 0.125)
            times[name][0].append((time.perf_counter() - start) / 10)
            start = time.perf_counter()
            for _ in range(100):
                cpu.rms_norm(x, w, 1e-5, out=out)
            times[name][1].append((time.perf_counter() - start) / 100)
    attention_ms = {n: statistics.median(t[0]) * 1e3 for n, t in times.items()}
    rms_us = {n: statistics.median(t[1]) * 1e6 for n, t in times.items()}
    print(json.dumps({
        "baseline_flags": args.baseline_flags, "current_flags": " ".join(current_flags),
        "outputs_compared": len(base), "outputs_differing": len(differ), "differing_kinds_max_abs_diff": max_diff,
        "decode_attention_f32_ms (8 seqs x 1000 keys, 9q/3kv heads x 64)": attention_ms,
        "rms_norm_f32_us (64 x 576)": rms_us,
        "current/baseline time": {"attention": attention_ms["current"] / attention_ms["baseline"],
                                  "rms_norm": rms_us["current"] / rms_us["baseline"]},
    }, indent=2))


if __name__ == "__main__":
    main()
