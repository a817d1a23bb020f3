"""Issue 2's workload through `vllm-cli bench throughput --baseline transformers` (which replaced
this script): 64 prompts x 128 random input tokens, 128 output tokens, float32. Extra arguments
are passed on (a later flag wins), e.g. `--dtype bfloat16 --output-json out.json`.

    python benchmarks/throughput_vs_transformers.py [MODEL] [vllm-cli bench throughput flags]
"""

import sys

from vllm_cli.cli.main import app

if __name__ == "__main__":
    app(["bench", "throughput", "--num-prompts", "64", "--input-len", "128", "--output-len", "128",
         "--dtype", "float32", "--baseline", "transformers", *sys.argv[1:]])
