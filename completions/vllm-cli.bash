# bash vllm-cli completion, generated from the Typer app by scripts/gen_completions.py: do not edit.
# Install: source this file from ~/.bashrc, or (with the bash-completion package) mkdir -p ~/.local/share/bash-completion/completions && cp vllm-cli.bash ~/.local/share/bash-completion/completions/vllm-cli

_vllm_cli() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local path="" skip=0 i word
    # Which (sub)command the words so far name; an option's value is not a subcommand.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        if ((skip)); then skip=0; continue; fi
        case "$path:$word" in
            ':bench') path='bench' ;;
            ':chat') path='chat' ;;
            ':generate') path='generate' ;;
            ':serve') path='serve' ;;
            'bench:latency') path='bench/latency' ;;
            'bench:serve') path='bench/serve' ;;
            'bench:throughput') path='bench/throughput' ;;
            'bench/latency:--batch-size'|'bench/latency:--input-len'|'bench/latency:--output-len'|'bench/latency:--num-iters-warmup'|'bench/latency:--num-iters'|'bench/latency:--output-json'|'bench/latency:--model'|'bench/latency:--tokenizer'|'bench/latency:--revision'|'bench/latency:--dtype'|'bench/latency:--device'|'bench/latency:--load-format'|'bench/latency:--model-impl'|'bench/latency:--attention-backend'|'bench/latency:--structured-outputs-backend'|'bench/latency:--seed'|'bench/latency:--max-model-len'|'bench/latency:--block-size'|'bench/latency:--kv-cache-memory'|'bench/latency:--gpu-memory-utilization'|'bench/latency:--max-num-seqs'|'bench/latency:--max-num-batched-tokens'|'bench/latency:--tensor-parallel-size'|'bench/latency:--nnodes'|'bench/latency:--node-rank'|'bench/latency:--master-addr'|'bench/latency:--master-port') skip=1 ;;
            'bench/serve:--url'|'bench/serve:--endpoint'|'bench/serve:--model'|'bench/serve:--num-prompts'|'bench/serve:--input-len'|'bench/serve:--output-len'|'bench/serve:--prefix-len'|'bench/serve:--dataset'|'bench/serve:--vocab-size'|'bench/serve:--request-rate'|'bench/serve:--max-concurrency'|'bench/serve:--seed'|'bench/serve:--api-key'|'bench/serve:--output-json') skip=1 ;;
            'bench/throughput:--num-prompts'|'bench/throughput:--input-len'|'bench/throughput:--output-len'|'bench/throughput:--prefix-len'|'bench/throughput:--dataset'|'bench/throughput:--baseline'|'bench/throughput:--baseline-batch-size'|'bench/throughput:--output-json'|'bench/throughput:--model'|'bench/throughput:--tokenizer'|'bench/throughput:--revision'|'bench/throughput:--dtype'|'bench/throughput:--device'|'bench/throughput:--load-format'|'bench/throughput:--model-impl'|'bench/throughput:--attention-backend'|'bench/throughput:--structured-outputs-backend'|'bench/throughput:--seed'|'bench/throughput:--max-model-len'|'bench/throughput:--block-size'|'bench/throughput:--kv-cache-memory'|'bench/throughput:--gpu-memory-utilization'|'bench/throughput:--max-num-seqs'|'bench/throughput:--max-num-batched-tokens'|'bench/throughput:--tensor-parallel-size'|'bench/throughput:--nnodes'|'bench/throughput:--node-rank'|'bench/throughput:--master-addr'|'bench/throughput:--master-port') skip=1 ;;
            'chat:--system'|'chat:--system-prompt'|'chat:-s'|'chat:--quick'|'chat:-q'|'chat:--chat-template'|'chat:--log-level'|'chat:--url'|'chat:--api-key'|'chat:--model-name'|'chat:--temperature'|'chat:--top-p'|'chat:--max-tokens'|'chat:--model'|'chat:--tokenizer'|'chat:--revision'|'chat:--dtype'|'chat:--device'|'chat:--load-format'|'chat:--model-impl'|'chat:--attention-backend'|'chat:--structured-outputs-backend'|'chat:--seed'|'chat:--max-model-len'|'chat:--block-size'|'chat:--kv-cache-memory'|'chat:--gpu-memory-utilization'|'chat:--max-num-seqs'|'chat:--max-num-batched-tokens'|'chat:--tensor-parallel-size'|'chat:--nnodes'|'chat:--node-rank'|'chat:--master-addr'|'chat:--master-port') skip=1 ;;
            'generate:--prompt'|'generate:-p'|'generate:--max-tokens'|'generate:--temperature'|'generate:--top-p'|'generate:--model'|'generate:--tokenizer'|'generate:--revision'|'generate:--dtype'|'generate:--device'|'generate:--load-format'|'generate:--model-impl'|'generate:--attention-backend'|'generate:--structured-outputs-backend'|'generate:--seed'|'generate:--max-model-len'|'generate:--block-size'|'generate:--kv-cache-memory'|'generate:--gpu-memory-utilization'|'generate:--max-num-seqs'|'generate:--max-num-batched-tokens'|'generate:--tensor-parallel-size'|'generate:--nnodes'|'generate:--node-rank'|'generate:--master-addr'|'generate:--master-port') skip=1 ;;
            'serve:--host'|'serve:--port'|'serve:--served-model-name'|'serve:--api-key'|'serve:--chat-template'|'serve:--allowed-origins'|'serve:--log-level'|'serve:--shutdown-timeout'|'serve:--tool-call-parser'|'serve:--tool-parser-plugin'|'serve:--reasoning-parser'|'serve:--model'|'serve:--tokenizer'|'serve:--revision'|'serve:--dtype'|'serve:--device'|'serve:--load-format'|'serve:--model-impl'|'serve:--attention-backend'|'serve:--structured-outputs-backend'|'serve:--seed'|'serve:--max-model-len'|'serve:--block-size'|'serve:--kv-cache-memory'|'serve:--gpu-memory-utilization'|'serve:--max-num-seqs'|'serve:--max-num-batched-tokens'|'serve:--tensor-parallel-size'|'serve:--nnodes'|'serve:--node-rank'|'serve:--master-addr'|'serve:--master-port') skip=1 ;;
        esac
    done
    # The value of an option: its choices, file names (the shell's default), or nothing for a number.
    case "$path:$prev" in
        'bench/latency:--dtype') COMPREPLY=($(compgen -W 'auto float32 bfloat16 float16' -- "$cur")); return ;;
        'bench/latency:--device') COMPREPLY=($(compgen -W 'auto cpu cuda' -- "$cur")); return ;;
        'bench/latency:--load-format') COMPREPLY=($(compgen -W 'auto dummy' -- "$cur")); return ;;
        'bench/latency:--model-impl') COMPREPLY=($(compgen -W 'auto native transformers' -- "$cur")); return ;;
        'bench/latency:--attention-backend') COMPREPLY=($(compgen -W 'auto torch triton' -- "$cur")); return ;;
        'bench/latency:--structured-outputs-backend') COMPREPLY=($(compgen -W 'auto xgrammar guidance' -- "$cur")); return ;;
        'bench/latency:--output-json'|'bench/latency:--model'|'bench/latency:--tokenizer'|'bench/latency:--revision'|'bench/latency:--kv-cache-memory'|'bench/latency:--master-addr') COMPREPLY=(); return ;;
        'bench/latency:--batch-size'|'bench/latency:--input-len'|'bench/latency:--output-len'|'bench/latency:--num-iters-warmup'|'bench/latency:--num-iters'|'bench/latency:--seed'|'bench/latency:--max-model-len'|'bench/latency:--block-size'|'bench/latency:--gpu-memory-utilization'|'bench/latency:--max-num-seqs'|'bench/latency:--max-num-batched-tokens'|'bench/latency:--tensor-parallel-size'|'bench/latency:--nnodes'|'bench/latency:--node-rank'|'bench/latency:--master-port') compopt +o default 2>/dev/null; COMPREPLY=(); return ;;
        'bench/serve:--url'|'bench/serve:--endpoint'|'bench/serve:--model'|'bench/serve:--dataset'|'bench/serve:--api-key'|'bench/serve:--output-json') COMPREPLY=(); return ;;
        'bench/serve:--num-prompts'|'bench/serve:--input-len'|'bench/serve:--output-len'|'bench/serve:--prefix-len'|'bench/serve:--vocab-size'|'bench/serve:--request-rate'|'bench/serve:--max-concurrency'|'bench/serve:--seed') compopt +o default 2>/dev/null; COMPREPLY=(); return ;;
        'bench/throughput:--dtype') COMPREPLY=($(compgen -W 'auto float32 bfloat16 float16' -- "$cur")); return ;;
        'bench/throughput:--device') COMPREPLY=($(compgen -W 'auto cpu cuda' -- "$cur")); return ;;
        'bench/throughput:--load-format') COMPREPLY=($(compgen -W 'auto dummy' -- "$cur")); return ;;
        'bench/throughput:--model-impl') COMPREPLY=($(compgen -W 'auto native transformers' -- "$cur")); return ;;
        'bench/throughput:--attention-backend') COMPREPLY=($(compgen -W 'auto torch triton' -- "$cur")); return ;;
        'bench/throughput:--structured-outputs-backend') COMPREPLY=($(compgen -W 'auto xgrammar guidance' -- "$cur")); return ;;
        'bench/throughput:--dataset'|'bench/throughput:--baseline'|'bench/throughput:--output-json'|'bench/throughput:--model'|'bench/throughput:--tokenizer'|'bench/throughput:--revision'|'bench/throughput:--kv-cache-memory'|'bench/throughput:--master-addr') COMPREPLY=(); return ;;
        'bench/throughput:--num-prompts'|'bench/throughput:--input-len'|'bench/throughput:--output-len'|'bench/throughput:--prefix-len'|'bench/throughput:--baseline-batch-size'|'bench/throughput:--seed'|'bench/throughput:--max-model-len'|'bench/throughput:--block-size'|'bench/throughput:--gpu-memory-utilization'|'bench/throughput:--max-num-seqs'|'bench/throughput:--max-num-batched-tokens'|'bench/throughput:--tensor-parallel-size'|'bench/throughput:--nnodes'|'bench/throughput:--node-rank'|'bench/throughput:--master-port') compopt +o default 2>/dev/null; COMPREPLY=(); return ;;
        'chat:--log-level') COMPREPLY=($(compgen -W 'debug info warning error critical' -- "$cur")); return ;;
        'chat:--dtype') COMPREPLY=($(compgen -W 'auto float32 bfloat16 float16' -- "$cur")); return ;;
        'chat:--device') COMPREPLY=($(compgen -W 'auto cpu cuda' -- "$cur")); return ;;
        'chat:--load-format') COMPREPLY=($(compgen -W 'auto dummy' -- "$cur")); return ;;
        'chat:--model-impl') COMPREPLY=($(compgen -W 'auto native transformers' -- "$cur")); return ;;
        'chat:--attention-backend') COMPREPLY=($(compgen -W 'auto torch triton' -- "$cur")); return ;;
        'chat:--structured-outputs-backend') COMPREPLY=($(compgen -W 'auto xgrammar guidance' -- "$cur")); return ;;
        'chat:--system'|'chat:--system-prompt'|'chat:-s'|'chat:--quick'|'chat:-q'|'chat:--chat-template'|'chat:--url'|'chat:--api-key'|'chat:--model-name'|'chat:--model'|'chat:--tokenizer'|'chat:--revision'|'chat:--kv-cache-memory'|'chat:--master-addr') COMPREPLY=(); return ;;
        'chat:--temperature'|'chat:--top-p'|'chat:--max-tokens'|'chat:--seed'|'chat:--max-model-len'|'chat:--block-size'|'chat:--gpu-memory-utilization'|'chat:--max-num-seqs'|'chat:--max-num-batched-tokens'|'chat:--tensor-parallel-size'|'chat:--nnodes'|'chat:--node-rank'|'chat:--master-port') compopt +o default 2>/dev/null; COMPREPLY=(); return ;;
        'generate:--dtype') COMPREPLY=($(compgen -W 'auto float32 bfloat16 float16' -- "$cur")); return ;;
        'generate:--device') COMPREPLY=($(compgen -W 'auto cpu cuda' -- "$cur")); return ;;
        'generate:--load-format') COMPREPLY=($(compgen -W 'auto dummy' -- "$cur")); return ;;
        'generate:--model-impl') COMPREPLY=($(compgen -W 'auto native transformers' -- "$cur")); return ;;
        'generate:--attention-backend') COMPREPLY=($(compgen -W 'auto torch triton' -- "$cur")); return ;;
        'generate:--structured-outputs-backend') COMPREPLY=($(compgen -W 'auto xgrammar guidance' -- "$cur")); return ;;
        'generate:--prompt'|'generate:-p'|'generate:--model'|'generate:--tokenizer'|'generate:--revision'|'generate:--kv-cache-memory'|'generate:--master-addr') COMPREPLY=(); return ;;
        'generate:--max-tokens'|'generate:--temperature'|'generate:--top-p'|'generate:--seed'|'generate:--max-model-len'|'generate:--block-size'|'generate:--gpu-memory-utilization'|'generate:--max-num-seqs'|'generate:--max-num-batched-tokens'|'generate:--tensor-parallel-size'|'generate:--nnodes'|'generate:--node-rank'|'generate:--master-port') compopt +o default 2>/dev/null; COMPREPLY=(); return ;;
        'serve:--log-level') COMPREPLY=($(compgen -W 'debug info warning error critical' -- "$cur")); return ;;
        'serve:--dtype') COMPREPLY=($(compgen -W 'auto float32 bfloat16 float16' -- "$cur")); return ;;
        'serve:--device') COMPREPLY=($(compgen -W 'auto cpu cuda' -- "$cur")); return ;;
        'serve:--load-format') COMPREPLY=($(compgen -W 'auto dummy' -- "$cur")); return ;;
        'serve:--model-impl') COMPREPLY=($(compgen -W 'auto native transformers' -- "$cur")); return ;;
        'serve:--attention-backend') COMPREPLY=($(compgen -W 'auto torch triton' -- "$cur")); return ;;
        'serve:--structured-outputs-backend') COMPREPLY=($(compgen -W 'auto xgrammar guidance' -- "$cur")); return ;;
        'serve:--host'|'serve:--served-model-name'|'serve:--api-key'|'serve:--chat-template'|'serve:--allowed-origins'|'serve:--tool-call-parser'|'serve:--tool-parser-plugin'|'serve:--reasoning-parser'|'serve:--model'|'serve:--tokenizer'|'serve:--revision'|'serve:--kv-cache-memory'|'serve:--master-addr') COMPREPLY=(); return ;;
        'serve:--port'|'serve:--shutdown-timeout'|'serve:--seed'|'serve:--max-model-len'|'serve:--block-size'|'serve:--gpu-memory-utilization'|'serve:--max-num-seqs'|'serve:--max-num-batched-tokens'|'serve:--tensor-parallel-size'|'serve:--nnodes'|'serve:--node-rank'|'serve:--master-port') compopt +o default 2>/dev/null; COMPREPLY=(); return ;;
    esac
    local opts="" cmds=""
    case "$path" in
        '') opts='--version -V --install-completion --show-completion -h --help'; cmds='bench chat generate serve' ;;
        'bench') opts='-h --help'; cmds='latency serve throughput' ;;
        'bench/latency') opts='--batch-size --input-len --output-len --num-iters-warmup --num-iters --output-json --model --tokenizer --revision --trust-remote-code --no-trust-remote-code --dtype --device --load-format --model-impl --attention-backend --structured-outputs-backend --seed --max-model-len --block-size --kv-cache-memory --gpu-memory-utilization --max-num-seqs --max-num-batched-tokens --enable-prefix-caching --no-enable-prefix-caching --enable-chunked-prefill --no-enable-chunked-prefill --tensor-parallel-size --nnodes --node-rank --master-addr --master-port -h --help'; cmds='' ;;
        'bench/serve') opts='--url --endpoint --model --num-prompts --input-len --output-len --prefix-len --dataset --vocab-size --request-rate --max-concurrency --ignore-eos --no-ignore-eos --seed --api-key --output-json -h --help'; cmds='' ;;
        'bench/throughput') opts='--num-prompts --input-len --output-len --prefix-len --dataset --baseline --baseline-batch-size --output-json --model --tokenizer --revision --trust-remote-code --no-trust-remote-code --dtype --device --load-format --model-impl --attention-backend --structured-outputs-backend --seed --max-model-len --block-size --kv-cache-memory --gpu-memory-utilization --max-num-seqs --max-num-batched-tokens --enable-prefix-caching --no-enable-prefix-caching --enable-chunked-prefill --no-enable-chunked-prefill --tensor-parallel-size --nnodes --node-rank --master-addr --master-port -h --help'; cmds='' ;;
        'chat') opts='--system --system-prompt -s --quick -q --whole-input --stats --no-stats --markdown --no-markdown --chat-template --log-level --url --api-key --model-name --temperature --top-p --max-tokens --model --tokenizer --revision --trust-remote-code --no-trust-remote-code --dtype --device --load-format --model-impl --attention-backend --structured-outputs-backend --seed --max-model-len --block-size --kv-cache-memory --gpu-memory-utilization --max-num-seqs --max-num-batched-tokens --enable-prefix-caching --no-enable-prefix-caching --enable-chunked-prefill --no-enable-chunked-prefill --tensor-parallel-size --nnodes --node-rank --master-addr --master-port -h --help'; cmds='' ;;
        'generate') opts='--prompt -p --chat --no-chat --max-tokens --temperature --top-p --model --tokenizer --revision --trust-remote-code --no-trust-remote-code --dtype --device --load-format --model-impl --attention-backend --structured-outputs-backend --seed --max-model-len --block-size --kv-cache-memory --gpu-memory-utilization --max-num-seqs --max-num-batched-tokens --enable-prefix-caching --no-enable-prefix-caching --enable-chunked-prefill --no-enable-chunked-prefill --tensor-parallel-size --nnodes --node-rank --master-addr --master-port -h --help'; cmds='' ;;
        'serve') opts='--host --port --served-model-name --api-key --chat-template --allowed-origins --log-level --shutdown-timeout --enable-auto-tool-choice --tool-call-parser --tool-parser-plugin --reasoning-parser --model --tokenizer --revision --trust-remote-code --no-trust-remote-code --dtype --device --load-format --model-impl --attention-backend --structured-outputs-backend --seed --max-model-len --block-size --kv-cache-memory --gpu-memory-utilization --max-num-seqs --max-num-batched-tokens --enable-prefix-caching --no-enable-prefix-caching --enable-chunked-prefill --no-enable-chunked-prefill --tensor-parallel-size --nnodes --node-rank --master-addr --master-port -h --help'; cmds='' ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n "$cmds" ]]; then
        COMPREPLY=($(compgen -W "$cmds" -- "$cur"))
    else
        COMPREPLY=()  # a positional (model path): file names, from -o default
    fi
}
complete -o default -F _vllm_cli vllm-cli
