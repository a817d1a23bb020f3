#compdef vllm-cli
# zsh vllm-cli completion, generated from the Typer app by scripts/gen_completions.py: do not edit.
# Install: mkdir -p ~/.zfunc && cp vllm-cli.zsh ~/.zfunc/_vllm-cli, then in ~/.zshrc before compinit (add `autoload -Uz compinit && compinit` if it has none): fpath=(~/.zfunc $fpath)

_vllm_cli() {
    local curcontext=$curcontext state line ret=1
    _arguments -s -S -C \
        '--version[Show the version and exit.]' \
        '-V[Show the version and exit.]' \
        '--install-completion[Install completion for the current shell.]' \
        '--show-completion[Show completion for the current shell, to copy it or customize the installation.]' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '1: :->command' \
        '*:: :->args' && ret=0
    case $state in
        command) local -a commands=('bench:Benchmark throughput (the default), latency or a server.' 'chat:Chat with a model in the terminal: a REPL that keeps the conversation (/help lists its...' 'generate:Generate completions for prompts with the offline engine (no server).' 'serve:Serve a model over OpenAI'\''s HTTP API (/v1/chat/completions, /v1/completions, /v1/models...')
            _describe -t commands command commands && ret=0 ;;
        args) case $words[1] in
            bench) _vllm_cli_bench && ret=0 ;;
            chat) _vllm_cli_chat && ret=0 ;;
            generate) _vllm_cli_generate && ret=0 ;;
            serve) _vllm_cli_serve && ret=0 ;;
        esac ;;
    esac
    return ret
}

_vllm_cli_bench() {
    local curcontext=$curcontext state line ret=1
    _arguments -s -S -C \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '1: :->command' \
        '*:: :->args' && ret=0
    case $state in
        command) local -a commands=('latency:Latency of one batch end to end (prefill and every decode step), over several iterations.' 'serve:Load an OpenAI-compatible server (vllm-cli serve, vLLM, llama.cpp, ...) over streaming...' 'sweep:`bench serve` at a series of request rates or concurrencies: one table, the plots (late...' 'throughput:Offline throughput: every request submitted to the engine at once, timed to the last fi...')
            _describe -t commands command commands && ret=0 ;;
        args) case $words[1] in
            latency) _vllm_cli_bench_latency && ret=0 ;;
            serve) _vllm_cli_bench_serve && ret=0 ;;
            sweep) _vllm_cli_bench_sweep && ret=0 ;;
            throughput) _vllm_cli_bench_throughput && ret=0 ;;
        esac ;;
    esac
    return ret
}

_vllm_cli_bench_latency() {
    _arguments -s -S \
        '--batch-size[Requests in the batch.]:batch-size: ' \
        '--input-len[Random prompt length in tokens.]:input-len: ' \
        '--output-len[Output tokens per request (EOS ignored).]:output-len: ' \
        '--num-iters-warmup[Untimed iterations first.]:num-iters-warmup: ' \
        '--num-iters[Timed iterations.]:num-iters: ' \
        '--output-json[Write the results as JSON to this file.]:output-json:_files' \
        '--model[The same as the MODEL argument (vLLM'\''s flag).]:model:_files' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto: float32 on CPU, the checkpoint'\''s 16-bit type on CUDA.]:dtype:(auto float32 bfloat16 float16)' \
        '--device[Where the model runs (auto: cuda when there is a GPU).]:device:(auto cpu cuda)' \
        '--load-format[dummy: random weights from config.json alone, for benchmarks.]:load-format:(auto dummy)' \
        '--quantization[Weight-only quantization, CPU (auto: a .gguf keeps its quantized tensors, a float check...]:quantization:(auto none gguf int8 int4)' \
        '--quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--no-quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--model-impl[auto: our implementation if there is one, else transformers'\'' modeling code on the paged...]:model-impl:(auto native transformers)' \
        '--attention-backend[auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set, else torch; triton ke...]:attention-backend:(auto torch triton)' \
        '--structured-outputs-backend[The constrained-decoding backend (auto: xgrammar, llguidance for what xgrammar cannot c...]:structured-outputs-backend:(auto xgrammar guidance)' \
        '--runner[Generate text, or serve embeddings (/v1/embeddings; auto: pooling for a sentence-transf...]:runner:(auto generate pooling)' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: $VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 Gi...]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use (default 0.9); on CPU, see --kv-cache-memory.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--prefix-caching-hash-algo[The prefix cache'\''s block hash (SHA-256 of a compact byte encoding, or of canonical CBOR).]:prefix-caching-hash-algo:(sha256 sha256_cbor)' \
        '--enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--no-enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--tensor-parallel-size[Ranks to shard the model over (processes; one GPU each on CUDA).]:tensor-parallel-size: ' \
        '--nnodes[Machines the tensor-parallel ranks span (run the same command on each).]:nnodes: ' \
        '--node-rank[This machine'\''s index among --nnodes (0 runs the engine and the API).]:node-rank: ' \
        '--master-addr[Rendezvous host of a multi-node group (default: $MASTER_ADDR, else 127.0.0.1).]:master-addr:_files' \
        '--master-port[Rendezvous port (default: $MASTER_PORT; one machine: any free port).]:master-port: ' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli_bench_serve() {
    _arguments -s -S \
        '--model[Model name to request (default: the server'\''s first).]:model:_files' \
        '--base-url[The server'\''s URL (default: http://HOST:PORT).]:base-url:_files' \
        '--url[The server'\''s URL (default: http://HOST:PORT).]:base-url:_files' \
        '--host[Server host, when --base-url is not given.]:host:_files' \
        '--port[Server port, when --base-url is not given.]:port: ' \
        '--endpoint[API path (default: /v1/completions; /v1/chat/completions with --backend openai-chat).]:endpoint:_files' \
        '--backend[openai | vllm (both /v1/completions) | openai-chat (/v1/chat/completions). Default: fro...]:backend:_files' \
        '--tokenizer[Count dataset tokens with this tokenizer (dir, hub id or .gguf) instead of the server'\''s...]:tokenizer:_files' \
        '--api-key[Sent as `Authorization: Bearer KEY`.]:api-key:_files' \
        '--dataset-name[random | sharegpt | sonnet | custom (default: random; with --dataset-path, sharegpt for...]:dataset-name:_files' \
        '--dataset-path[The dataset file: ShareGPT JSON, a text file of lines (sonnet), or JSONL with "prompt"...]:dataset-path:_files' \
        '--dataset[The dataset file: ShareGPT JSON, a text file of lines (sonnet), or JSONL with "prompt"...]:dataset-path:_files' \
        '--num-prompts[Number of requests.]:num-prompts: ' \
        '--random-input-len[Random prompt length in tokens.]:random-input-len: ' \
        '--input-len[Random prompt length in tokens.]:random-input-len: ' \
        '--random-output-len[Output tokens per request (default 64; sharegpt: the reply'\''s length; custom: the file'\''s...]:random-output-len: ' \
        '--output-len[Output tokens per request (default 64; sharegpt: the reply'\''s length; custom: the file'\''s...]:random-output-len: ' \
        '--random-prefix-len[Random tokens shared by every prompt, before its own.]:random-prefix-len: ' \
        '--prefix-len[Random tokens shared by every prompt, before its own.]:random-prefix-len: ' \
        '--random-range-ratio[Random lengths drawn from (L*(1-r), L*(1+r)).]:random-range-ratio: ' \
        '--sonnet-input-len[Sonnet prompt length in tokens.]:sonnet-input-len: ' \
        '--sonnet-output-len[Sonnet output tokens per request.]:sonnet-output-len: ' \
        '--sonnet-prefix-len[Sonnet tokens shared by every prompt.]:sonnet-prefix-len: ' \
        '--skip-chat-template[custom: send the prompts as they are, not through the chat template.]' \
        '--vocab-size[Random token ids are drawn from (0, N): keep it within the model'\''s vocabulary.]:vocab-size: ' \
        '--request-rate[Requests per second; inf sends them all at once.]:request-rate: ' \
        '--burstiness[Gamma shape of the gaps between requests: 1 Poisson, < 1 burstier, > 1 more even (inf:...]:burstiness: ' \
        '--max-concurrency[Most requests in flight at once (default: no limit).]:max-concurrency: ' \
        '--ramp-up-strategy[linear | exponential: the rate goes from --ramp-up-start-rps (first request) to --ramp-...]:ramp-up-strategy:_files' \
        '--ramp-up-start-rps[]:ramp-up-start-rps: ' \
        '--ramp-up-end-rps[]:ramp-up-end-rps: ' \
        '--ignore-eos[Decode the full output length (vLLM'\''s ignore_eos; default: on for random prompts, off f...]' \
        '--no-ignore-eos[Decode the full output length (vLLM'\''s ignore_eos; default: on for random prompts, off f...]' \
        '--seed[Seeds the prompts and the arrival times.]:seed: ' \
        '--percentile-metrics[Metrics to report statistics of: ttft,tpot,itl,e2el.]:percentile-metrics:_files' \
        '--metric-percentiles[Percentiles to report, e.g. 50,90,99.]:metric-percentiles:_files' \
        '--goodput[SLOs in ms, e.g. --goodput ttft:500 tpot:50: request_goodput counts the requests that m...]:goodput:_files' \
        '--label[Names the result (default: the backend).]:label:_files' \
        '--save-result[Write the result JSON.]' \
        '--result-dir[Where results go (default: here).]:result-dir:_files' \
        '--result-filename[Result file name (default: vLLM'\''s {label}-{rate}qps-{model}-{date}.json).]:result-filename:_files' \
        '--output-json[Write the result JSON to this path.]:output-json:_files' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli_bench_sweep() {
    _arguments -s -S \
        '--request-rates[Request rates to run one after another, e.g. 1,2,4,8.]:request-rates:_files' \
        '--max-concurrencies[Concurrency limits to run one after another, e.g. 1,4,16.]:max-concurrencies:_files' \
        '--plot[Write the plots as PNG and SVG (needs matplotlib).]' \
        '--no-plot[Write the plots as PNG and SVG (needs matplotlib).]' \
        '--terminal-plot[Also draw TTFT/TPOT vs the swept value here (needs plotext).]' \
        '--no-terminal-plot[Also draw TTFT/TPOT vs the swept value here (needs plotext).]' \
        '--model[Model name to request (default: the server'\''s first).]:model:_files' \
        '--base-url[The server'\''s URL (default: http://HOST:PORT).]:base-url:_files' \
        '--url[The server'\''s URL (default: http://HOST:PORT).]:base-url:_files' \
        '--host[Server host, when --base-url is not given.]:host:_files' \
        '--port[Server port, when --base-url is not given.]:port: ' \
        '--endpoint[API path (default: /v1/completions; /v1/chat/completions with --backend openai-chat).]:endpoint:_files' \
        '--backend[openai | vllm (both /v1/completions) | openai-chat (/v1/chat/completions). Default: fro...]:backend:_files' \
        '--tokenizer[Count dataset tokens with this tokenizer (dir, hub id or .gguf) instead of the server'\''s...]:tokenizer:_files' \
        '--api-key[Sent as `Authorization: Bearer KEY`.]:api-key:_files' \
        '--dataset-name[random | sharegpt | sonnet | custom (default: random; with --dataset-path, sharegpt for...]:dataset-name:_files' \
        '--dataset-path[The dataset file: ShareGPT JSON, a text file of lines (sonnet), or JSONL with "prompt"...]:dataset-path:_files' \
        '--dataset[The dataset file: ShareGPT JSON, a text file of lines (sonnet), or JSONL with "prompt"...]:dataset-path:_files' \
        '--num-prompts[Number of requests.]:num-prompts: ' \
        '--random-input-len[Random prompt length in tokens.]:random-input-len: ' \
        '--input-len[Random prompt length in tokens.]:random-input-len: ' \
        '--random-output-len[Output tokens per request (default 64; sharegpt: the reply'\''s length; custom: the file'\''s...]:random-output-len: ' \
        '--output-len[Output tokens per request (default 64; sharegpt: the reply'\''s length; custom: the file'\''s...]:random-output-len: ' \
        '--random-prefix-len[Random tokens shared by every prompt, before its own.]:random-prefix-len: ' \
        '--prefix-len[Random tokens shared by every prompt, before its own.]:random-prefix-len: ' \
        '--random-range-ratio[Random lengths drawn from (L*(1-r), L*(1+r)).]:random-range-ratio: ' \
        '--sonnet-input-len[Sonnet prompt length in tokens.]:sonnet-input-len: ' \
        '--sonnet-output-len[Sonnet output tokens per request.]:sonnet-output-len: ' \
        '--sonnet-prefix-len[Sonnet tokens shared by every prompt.]:sonnet-prefix-len: ' \
        '--skip-chat-template[custom: send the prompts as they are, not through the chat template.]' \
        '--vocab-size[Random token ids are drawn from (0, N): keep it within the model'\''s vocabulary.]:vocab-size: ' \
        '--request-rate[Requests per second; inf sends them all at once.]:request-rate: ' \
        '--burstiness[Gamma shape of the gaps between requests: 1 Poisson, < 1 burstier, > 1 more even (inf:...]:burstiness: ' \
        '--max-concurrency[Most requests in flight at once (default: no limit).]:max-concurrency: ' \
        '--ramp-up-strategy[linear | exponential: the rate goes from --ramp-up-start-rps (first request) to --ramp-...]:ramp-up-strategy:_files' \
        '--ramp-up-start-rps[]:ramp-up-start-rps: ' \
        '--ramp-up-end-rps[]:ramp-up-end-rps: ' \
        '--ignore-eos[Decode the full output length (vLLM'\''s ignore_eos; default: on for random prompts, off f...]' \
        '--no-ignore-eos[Decode the full output length (vLLM'\''s ignore_eos; default: on for random prompts, off f...]' \
        '--seed[Seeds the prompts and the arrival times.]:seed: ' \
        '--percentile-metrics[Metrics to report statistics of: ttft,tpot,itl,e2el.]:percentile-metrics:_files' \
        '--metric-percentiles[Percentiles to report, e.g. 50,90,99.]:metric-percentiles:_files' \
        '--goodput[SLOs in ms, e.g. --goodput ttft:500 tpot:50: request_goodput counts the requests that m...]:goodput:_files' \
        '--label[Names the result (default: the backend).]:label:_files' \
        '--save-result[Write the result JSON.]' \
        '--result-dir[Where results go (default: here).]:result-dir:_files' \
        '--result-filename[Result file name (default: vLLM'\''s {label}-{rate}qps-{model}-{date}.json).]:result-filename:_files' \
        '--output-json[Write the result JSON to this path.]:output-json:_files' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli_bench_throughput() {
    _arguments -s -S \
        '--num-prompts[Number of requests.]:num-prompts: ' \
        '--input-len[Random prompt length in tokens.]:input-len: ' \
        '--output-len[Output tokens per request, EOS ignored (default: 64; with --dataset, the file'\''s, else 1...]:output-len: ' \
        '--prefix-len[Random tokens shared by every prompt, before its own --input-len.]:prefix-len: ' \
        '--dataset[Prompts from a file instead of random ones: JSONL ({"prompt": ..., "output_len": ...} p...]:dataset:_files' \
        '--baseline[Also run the same prompts through '\''transformers'\'' (its generate, static batches) and pri...]:baseline:_files' \
        '--baseline-batch-size[Static batch size of the baseline (default: --max-num-seqs or all).]:baseline-batch-size: ' \
        '--output-json[Write the results as JSON to this file.]:output-json:_files' \
        '--model[The same as the MODEL argument (vLLM'\''s flag).]:model:_files' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto: float32 on CPU, the checkpoint'\''s 16-bit type on CUDA.]:dtype:(auto float32 bfloat16 float16)' \
        '--device[Where the model runs (auto: cuda when there is a GPU).]:device:(auto cpu cuda)' \
        '--load-format[dummy: random weights from config.json alone, for benchmarks.]:load-format:(auto dummy)' \
        '--quantization[Weight-only quantization, CPU (auto: a .gguf keeps its quantized tensors, a float check...]:quantization:(auto none gguf int8 int4)' \
        '--quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--no-quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--model-impl[auto: our implementation if there is one, else transformers'\'' modeling code on the paged...]:model-impl:(auto native transformers)' \
        '--attention-backend[auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set, else torch; triton ke...]:attention-backend:(auto torch triton)' \
        '--structured-outputs-backend[The constrained-decoding backend (auto: xgrammar, llguidance for what xgrammar cannot c...]:structured-outputs-backend:(auto xgrammar guidance)' \
        '--runner[Generate text, or serve embeddings (/v1/embeddings; auto: pooling for a sentence-transf...]:runner:(auto generate pooling)' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: $VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 Gi...]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use (default 0.9); on CPU, see --kv-cache-memory.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--prefix-caching-hash-algo[The prefix cache'\''s block hash (SHA-256 of a compact byte encoding, or of canonical CBOR).]:prefix-caching-hash-algo:(sha256 sha256_cbor)' \
        '--enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--no-enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--tensor-parallel-size[Ranks to shard the model over (processes; one GPU each on CUDA).]:tensor-parallel-size: ' \
        '--nnodes[Machines the tensor-parallel ranks span (run the same command on each).]:nnodes: ' \
        '--node-rank[This machine'\''s index among --nnodes (0 runs the engine and the API).]:node-rank: ' \
        '--master-addr[Rendezvous host of a multi-node group (default: $MASTER_ADDR, else 127.0.0.1).]:master-addr:_files' \
        '--master-port[Rendezvous port (default: $MASTER_PORT; one machine: any free port).]:master-port: ' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli_chat() {
    _arguments -s -S \
        '--system[System message, e.g. '\''translate to Italian'\''.]:system:_files' \
        '--system-prompt[System message, e.g. '\''translate to Italian'\''.]:system:_files' \
        '-s[System message, e.g. '\''translate to Italian'\''.]:system:_files' \
        '--quick[Send one message, print the reply, exit.]:quick:_files' \
        '-q[Send one message, print the reply, exit.]:quick:_files' \
        '--whole-input[With piped stdin: all of it is one message (default: each line is one).]' \
        '--stats[Print tokens and tokens/s after each reply (on stderr).]' \
        '--no-stats[Print tokens and tokens/s after each reply (on stderr).]' \
        '--markdown[Render replies as Markdown on a terminal (/markdown switches it later).]' \
        '--no-markdown[Render replies as Markdown on a terminal (/markdown switches it later).]' \
        '--chat-template[Jinja chat template (a file or inline); default: the tokenizer'\''s, else ChatML.]:chat-template:_files' \
        '--log-level[Log level (default: warning, so that the chat stays readable).]:log-level:(debug info warning error critical)' \
        '--url[Chat with an OpenAI-compatible server instead, e.g. http://localhost:8000/v1.]:url:_files' \
        '--api-key[The server'\''s API key.]:api-key:_files' \
        '--model-name[The served model to use (default: the first the server lists).]:model-name:_files' \
        '--temperature[0 = greedy.]:temperature: ' \
        '--top-p[]:top-p: ' \
        '--max-tokens[Longest reply (default: up to the end of the context).]:max-tokens: ' \
        '--model[The same as the MODEL argument (vLLM'\''s flag).]:model:_files' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto: float32 on CPU, the checkpoint'\''s 16-bit type on CUDA.]:dtype:(auto float32 bfloat16 float16)' \
        '--device[Where the model runs (auto: cuda when there is a GPU).]:device:(auto cpu cuda)' \
        '--load-format[dummy: random weights from config.json alone, for benchmarks.]:load-format:(auto dummy)' \
        '--quantization[Weight-only quantization, CPU (auto: a .gguf keeps its quantized tensors, a float check...]:quantization:(auto none gguf int8 int4)' \
        '--quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--no-quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--model-impl[auto: our implementation if there is one, else transformers'\'' modeling code on the paged...]:model-impl:(auto native transformers)' \
        '--attention-backend[auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set, else torch; triton ke...]:attention-backend:(auto torch triton)' \
        '--structured-outputs-backend[The constrained-decoding backend (auto: xgrammar, llguidance for what xgrammar cannot c...]:structured-outputs-backend:(auto xgrammar guidance)' \
        '--runner[Generate text, or serve embeddings (/v1/embeddings; auto: pooling for a sentence-transf...]:runner:(auto generate pooling)' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: $VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 Gi...]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use (default 0.9); on CPU, see --kv-cache-memory.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--prefix-caching-hash-algo[The prefix cache'\''s block hash (SHA-256 of a compact byte encoding, or of canonical CBOR).]:prefix-caching-hash-algo:(sha256 sha256_cbor)' \
        '--enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--no-enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--tensor-parallel-size[Ranks to shard the model over (processes; one GPU each on CUDA).]:tensor-parallel-size: ' \
        '--nnodes[Machines the tensor-parallel ranks span (run the same command on each).]:nnodes: ' \
        '--node-rank[This machine'\''s index among --nnodes (0 runs the engine and the API).]:node-rank: ' \
        '--master-addr[Rendezvous host of a multi-node group (default: $MASTER_ADDR, else 127.0.0.1).]:master-addr:_files' \
        '--master-port[Rendezvous port (default: $MASTER_PORT; one machine: any free port).]:master-port: ' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli_generate() {
    _arguments -s -S \
        '--prompt[A prompt (repeat for a batch; '\''-'\'' reads stdin); default '\''Hello, my name is'\''.]:prompt:_files' \
        '-p[A prompt (repeat for a batch; '\''-'\'' reads stdin); default '\''Hello, my name is'\''.]:prompt:_files' \
        '--chat[Send each prompt as a user message through the chat template.]' \
        '--no-chat[Send each prompt as a user message through the chat template.]' \
        '--max-tokens[Tokens to generate per prompt.]:max-tokens: ' \
        '--temperature[0 = greedy.]:temperature: ' \
        '--top-p[]:top-p: ' \
        '--model[The same as the MODEL argument (vLLM'\''s flag).]:model:_files' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto: float32 on CPU, the checkpoint'\''s 16-bit type on CUDA.]:dtype:(auto float32 bfloat16 float16)' \
        '--device[Where the model runs (auto: cuda when there is a GPU).]:device:(auto cpu cuda)' \
        '--load-format[dummy: random weights from config.json alone, for benchmarks.]:load-format:(auto dummy)' \
        '--quantization[Weight-only quantization, CPU (auto: a .gguf keeps its quantized tensors, a float check...]:quantization:(auto none gguf int8 int4)' \
        '--quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--no-quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--model-impl[auto: our implementation if there is one, else transformers'\'' modeling code on the paged...]:model-impl:(auto native transformers)' \
        '--attention-backend[auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set, else torch; triton ke...]:attention-backend:(auto torch triton)' \
        '--structured-outputs-backend[The constrained-decoding backend (auto: xgrammar, llguidance for what xgrammar cannot c...]:structured-outputs-backend:(auto xgrammar guidance)' \
        '--runner[Generate text, or serve embeddings (/v1/embeddings; auto: pooling for a sentence-transf...]:runner:(auto generate pooling)' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: $VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 Gi...]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use (default 0.9); on CPU, see --kv-cache-memory.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--prefix-caching-hash-algo[The prefix cache'\''s block hash (SHA-256 of a compact byte encoding, or of canonical CBOR).]:prefix-caching-hash-algo:(sha256 sha256_cbor)' \
        '--enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--no-enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--tensor-parallel-size[Ranks to shard the model over (processes; one GPU each on CUDA).]:tensor-parallel-size: ' \
        '--nnodes[Machines the tensor-parallel ranks span (run the same command on each).]:nnodes: ' \
        '--node-rank[This machine'\''s index among --nnodes (0 runs the engine and the API).]:node-rank: ' \
        '--master-addr[Rendezvous host of a multi-node group (default: $MASTER_ADDR, else 127.0.0.1).]:master-addr:_files' \
        '--master-port[Rendezvous port (default: $MASTER_PORT; one machine: any free port).]:master-port: ' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli_serve() {
    _arguments -s -S \
        '--host[Interface to listen on (default: all interfaces).]:host:_files' \
        '--port[Port to listen on (0: any free port).]:port: ' \
        '--served-model-name[Name(s) clients use in `model` (default: the model'\''s). The first is used in responses t...]:served-model-name:_files' \
        '--api-key[Require `Authorization: Bearer KEY` (all paths but /health, /metrics, /version).]:api-key:_files' \
        '--chat-template[Jinja chat template (a file or inline); default: the tokenizer'\''s, else ChatML.]:chat-template:_files' \
        '--allowed-origins[CORS origins allowed to call the API: '\''*'\'', a list like '\''("https://a.example")'\'' or comma...]:allowed-origins:_files' \
        '--log-level[Server log level.]:log-level:(debug info warning error critical)' \
        '--shutdown-timeout[On SIGINT/SIGTERM, seconds in-flight requests get to finish before they are aborted.]:shutdown-timeout: ' \
        '--responses-store-size[How many /v1/responses results the server keeps in memory (least recently used dropped...]:responses-store-size: ' \
        '--enable-auto-tool-choice[Serve tool_choice '\''auto'\'' (and tools without tool_choice) by parsing calls out of the mo...]' \
        '--tool-call-parser[How the model writes tool calls: hermes, llama3_json, mistral, pythonic, or one a --too...]:tool-call-parser:_files' \
        '--tool-parser-plugin[A Python file that registers a tool parser (ToolParserManager.register_module).]:tool-parser-plugin:_files' \
        '--reasoning-parser[Split the model'\''s thinking into reasoning_content: deepseek_r1, qwen3.]:reasoning-parser:_files' \
        '--model[The same as the MODEL argument (vLLM'\''s flag).]:model:_files' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto: float32 on CPU, the checkpoint'\''s 16-bit type on CUDA.]:dtype:(auto float32 bfloat16 float16)' \
        '--device[Where the model runs (auto: cuda when there is a GPU).]:device:(auto cpu cuda)' \
        '--load-format[dummy: random weights from config.json alone, for benchmarks.]:load-format:(auto dummy)' \
        '--quantization[Weight-only quantization, CPU (auto: a .gguf keeps its quantized tensors, a float check...]:quantization:(auto none gguf int8 int4)' \
        '--quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--no-quantize-lm-head[With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears'\'' format...]' \
        '--model-impl[auto: our implementation if there is one, else transformers'\'' modeling code on the paged...]:model-impl:(auto native transformers)' \
        '--attention-backend[auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set, else torch; triton ke...]:attention-backend:(auto torch triton)' \
        '--structured-outputs-backend[The constrained-decoding backend (auto: xgrammar, llguidance for what xgrammar cannot c...]:structured-outputs-backend:(auto xgrammar guidance)' \
        '--runner[Generate text, or serve embeddings (/v1/embeddings; auto: pooling for a sentence-transf...]:runner:(auto generate pooling)' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: $VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 Gi...]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use (default 0.9); on CPU, see --kv-cache-memory.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--prefix-caching-hash-algo[The prefix cache'\''s block hash (SHA-256 of a compact byte encoding, or of canonical CBOR).]:prefix-caching-hash-algo:(sha256 sha256_cbor)' \
        '--enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--no-enable-chunked-prefill[Split long prompts into chunks that share steps with decodes.]' \
        '--tensor-parallel-size[Ranks to shard the model over (processes; one GPU each on CUDA).]:tensor-parallel-size: ' \
        '--nnodes[Machines the tensor-parallel ranks span (run the same command on each).]:nnodes: ' \
        '--node-rank[This machine'\''s index among --nnodes (0 runs the engine and the API).]:node-rank: ' \
        '--master-addr[Rendezvous host of a multi-node group (default: $MASTER_ADDR, else 127.0.0.1).]:master-addr:_files' \
        '--master-port[Rendezvous port (default: $MASTER_PORT; one machine: any free port).]:master-port: ' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]' \
        '*:file:_files'
}

_vllm_cli "$@"
