"""`vllm-cli bench`: workloads, runners (offline engine, transformers, HTTP server) and reports.

The CLI in vllm_cli/cli/bench.py imports these modules only when a benchmark runs."""
