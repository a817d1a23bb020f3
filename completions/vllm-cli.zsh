#compdef vllm-cli
# zsh vllm-cli completion, generated from the Typer app by scripts/gen_completions.py: do not edit.
# Install: copy it as _vllm-cli into a directory on $fpath (before compinit runs).

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
        command) local -a commands=('latency:Latency of one batch end to end (prefill and every decode step), over several iterations.' 'serve:Load an OpenAI-compatible server (vllm-cli serve, vLLM, llama.cpp, ...) over streaming...' 'throughput:Offline throughput: every request submitted to the engine at once, timed to the last fi...')
            _describe -t commands command commands && ret=0 ;;
        args) case $words[1] in
            latency) _vllm_cli_bench_latency && ret=0 ;;
            serve) _vllm_cli_bench_serve && ret=0 ;;
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
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto | float32 | bfloat16 | float16 (auto: float32 on CPU, the checkpoint'\''s 16-bit type...]:dtype:_files' \
        '--device[auto | cpu | cuda.]:device:_files' \
        '--load-format[auto | dummy (random weights from config.json alone, for benchmarks).]:load-format:_files' \
        '--model-impl[auto | native | transformers (auto: our implementation if there is one, else transforme...]:model-impl:_files' \
        '--attention-backend[auto | torch | triton (auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set...]:attention-backend:_files' \
        '--structured-outputs-backend[auto | xgrammar | guidance: the constrained-decoding backend (auto: xgrammar, llguidanc...]:structured-outputs-backend:_files' \
        '--runner[auto | generate | pooling: generate text, or serve embeddings (/v1/embeddings; auto: po...]:runner:_files' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: 4 GiB or a third of free RAM).]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
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
        '--url[The server'\''s base URL.]:url:_files' \
        '--endpoint[/v1/completions or /v1/chat/completions.]:endpoint:_files' \
        '--model[Model name to request (default: the server'\''s first).]:model:_files' \
        '--num-prompts[Number of requests.]:num-prompts: ' \
        '--input-len[Random prompt length in tokens.]:input-len: ' \
        '--output-len[Output tokens per request, EOS ignored (default: 64; with --dataset, the file'\''s, else 1...]:output-len: ' \
        '--prefix-len[Random tokens shared by every prompt, before its own --input-len.]:prefix-len: ' \
        '--dataset[Prompts from a file instead of random ones: JSONL ({"prompt": ..., "output_len": ...} p...]:dataset:_files' \
        '--vocab-size[Random token ids are drawn from (0, N): keep it within the model'\''s vocabulary.]:vocab-size: ' \
        '--request-rate[Requests per second (Poisson arrivals); inf sends them all at once.]:request-rate: ' \
        '--max-concurrency[Most requests in flight at once (default: no limit).]:max-concurrency: ' \
        '--ignore-eos[Ask for the full output length (vLLM'\''s ignore_eos); turn off for servers that reject it.]' \
        '--no-ignore-eos[Ask for the full output length (vLLM'\''s ignore_eos); turn off for servers that reject it.]' \
        '--seed[Seeds the prompts and the arrival times.]:seed: ' \
        '--api-key[Sent as `Authorization: Bearer KEY`.]:api-key:_files' \
        '--output-json[Write the results as JSON to this file.]:output-json:_files' \
        '-h[Show this message and exit.]' \
        '--help[Show this message and exit.]'
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
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto | float32 | bfloat16 | float16 (auto: float32 on CPU, the checkpoint'\''s 16-bit type...]:dtype:_files' \
        '--device[auto | cpu | cuda.]:device:_files' \
        '--load-format[auto | dummy (random weights from config.json alone, for benchmarks).]:load-format:_files' \
        '--model-impl[auto | native | transformers (auto: our implementation if there is one, else transforme...]:model-impl:_files' \
        '--attention-backend[auto | torch | triton (auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set...]:attention-backend:_files' \
        '--structured-outputs-backend[auto | xgrammar | guidance: the constrained-decoding backend (auto: xgrammar, llguidanc...]:structured-outputs-backend:_files' \
        '--runner[auto | generate | pooling: generate text, or serve embeddings (/v1/embeddings; auto: po...]:runner:_files' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: 4 GiB or a third of free RAM).]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
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
        '--chat-template[Jinja chat template (a file or inline); default: the tokenizer'\''s, else ChatML.]:chat-template:_files' \
        '--log-level[debug | info | warning | error | critical (default: warning, so that the chat stays rea...]:log-level:_files' \
        '--url[Chat with an OpenAI-compatible server instead, e.g. http://localhost:8000/v1.]:url:_files' \
        '--api-key[The server'\''s API key.]:api-key:_files' \
        '--model-name[The served model to use (default: the first the server lists).]:model-name:_files' \
        '--temperature[0 = greedy.]:temperature: ' \
        '--top-p[]:top-p: ' \
        '--max-tokens[Longest reply (default: up to the end of the context).]:max-tokens: ' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto | float32 | bfloat16 | float16 (auto: float32 on CPU, the checkpoint'\''s 16-bit type...]:dtype:_files' \
        '--device[auto | cpu | cuda.]:device:_files' \
        '--load-format[auto | dummy (random weights from config.json alone, for benchmarks).]:load-format:_files' \
        '--model-impl[auto | native | transformers (auto: our implementation if there is one, else transforme...]:model-impl:_files' \
        '--attention-backend[auto | torch | triton (auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set...]:attention-backend:_files' \
        '--structured-outputs-backend[auto | xgrammar | guidance: the constrained-decoding backend (auto: xgrammar, llguidanc...]:structured-outputs-backend:_files' \
        '--runner[auto | generate | pooling: generate text, or serve embeddings (/v1/embeddings; auto: po...]:runner:_files' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: 4 GiB or a third of free RAM).]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
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
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto | float32 | bfloat16 | float16 (auto: float32 on CPU, the checkpoint'\''s 16-bit type...]:dtype:_files' \
        '--device[auto | cpu | cuda.]:device:_files' \
        '--load-format[auto | dummy (random weights from config.json alone, for benchmarks).]:load-format:_files' \
        '--model-impl[auto | native | transformers (auto: our implementation if there is one, else transforme...]:model-impl:_files' \
        '--attention-backend[auto | torch | triton (auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set...]:attention-backend:_files' \
        '--structured-outputs-backend[auto | xgrammar | guidance: the constrained-decoding backend (auto: xgrammar, llguidanc...]:structured-outputs-backend:_files' \
        '--runner[auto | generate | pooling: generate text, or serve embeddings (/v1/embeddings; auto: po...]:runner:_files' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: 4 GiB or a third of free RAM).]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
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
        '--log-level[debug | info | warning | error | critical.]:log-level:_files' \
        '--shutdown-timeout[On SIGINT/SIGTERM, seconds in-flight requests get to finish before they are aborted.]:shutdown-timeout: ' \
        '--enable-auto-tool-choice[Serve tool_choice '\''auto'\'' (and tools without tool_choice) by parsing calls out of the mo...]' \
        '--tool-call-parser[How the model writes tool calls: hermes, llama3_json, mistral, pythonic, or one a --too...]:tool-call-parser:_files' \
        '--tool-parser-plugin[A Python file that registers a tool parser (ToolParserManager.register_module).]:tool-parser-plugin:_files' \
        '--reasoning-parser[Split the model'\''s thinking into reasoning_content: deepseek_r1, qwen3.]:reasoning-parser:_files' \
        '--tokenizer[Tokenizer dir or hub id (default: the model'\''s own).]:tokenizer:_files' \
        '--revision[Model revision (branch, tag or commit) on the hub.]:revision:_files' \
        '--trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--no-trust-remote-code[Allow configs/tokenizers that need remote code.]' \
        '--dtype[auto | float32 | bfloat16 | float16 (auto: float32 on CPU, the checkpoint'\''s 16-bit type...]:dtype:_files' \
        '--device[auto | cpu | cuda.]:device:_files' \
        '--load-format[auto | dummy (random weights from config.json alone, for benchmarks).]:load-format:_files' \
        '--model-impl[auto | native | transformers (auto: our implementation if there is one, else transforme...]:model-impl:_files' \
        '--attention-backend[auto | torch | triton (auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set...]:attention-backend:_files' \
        '--structured-outputs-backend[auto | xgrammar | guidance: the constrained-decoding backend (auto: xgrammar, llguidanc...]:structured-outputs-backend:_files' \
        '--runner[auto | generate | pooling: generate text, or serve embeddings (/v1/embeddings; auto: po...]:runner:_files' \
        '--seed[Random seed.]:seed: ' \
        '--max-model-len[Context length (default: the model'\''s).]:max-model-len: ' \
        '--block-size[Tokens per KV-cache block.]:block-size: ' \
        '--kv-cache-memory[KV-cache size on CPU, e.g. 4GiB (default: 4 GiB or a third of free RAM).]:kv-cache-memory:_files' \
        '--gpu-memory-utilization[Share of GPU memory the engine may use.]:gpu-memory-utilization: ' \
        '--max-num-seqs[Most sequences running at once.]:max-num-seqs: ' \
        '--max-num-batched-tokens[Token budget of one step (default 2048).]:max-num-batched-tokens: ' \
        '--enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
        '--no-enable-prefix-caching[Reuse the KV cache of shared prompt prefixes.]' \
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
