"""The first request after `vllm-cli serve` says ready (/health 200) against the second.

Starts the server as a user would (the default model unless one is given), waits for /health,
then times two identical greedy chat requests one after the other. With --cold-cache the
server gets an empty ${XDG_CACHE_HOME} (the C kernels are compiled, the GGUF metadata
converted, as on a machine's very first run).

    python benchmarks/first_request.py [--model PATH] [--cold-cache] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BODY = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16,
        "temperature": 0}


def one_run(model: str | None, cold_cache: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        if cold_cache:
            env["XDG_CACHE_HOME"] = tmp
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "vllm_cli.cli.main", "serve", *([model] if model else []),
               "--host", "127.0.0.1", "--port", "0", "--kv-cache-memory", "1GiB"]
        start = time.perf_counter()
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            while not (m := re.search(r" on (http://127\.0\.0\.1:\d+) ", log.read_text(errors="replace"))):
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            url = m.group(1)
            while httpx.get(f"{url}/health").status_code != 200:
                time.sleep(0.05)
            ready = time.perf_counter() - start
            model_name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            times = []
            for _ in range(2):
                t = time.perf_counter()
                r = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": model_name}, timeout=300)
                r.raise_for_status()
                times.append(time.perf_counter() - t)
            return {"ready_s": ready, "first_s": times[0], "second_s": times[1]}
        finally:
            proc.terminate()
            proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cold-cache", action="store_true", help="an empty XDG_CACHE_HOME for the server")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    print("start->/health 200 (s) | first request (s) | second request (s) | first/second")
    for _ in range(args.runs):
        r = one_run(args.model, args.cold_cache)
        print(f"{r['ready_s']:.1f} | {r['first_s']:.2f} | {r['second_s']:.2f} | {r['first_s'] / r['second_s']:.1f}x",
              flush=True)


if __name__ == "__main__":
    main()
