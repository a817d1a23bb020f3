"""The offline API: `LLM(model=...).generate(prompts, SamplingParams(...))`, as in vLLM."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from typing import Any, cast

from vllm_cli.config import EngineArgs
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.engine.output_processor import EngineOutput
from vllm_cli.engine.processor import PromptInput
from vllm_cli.outputs import PoolingRequestOutput, RequestOutput
from vllm_cli.pooling_params import PoolingParams
from vllm_cli.sampling_params import SamplingParams
from vllm_cli.tokenizer import apply_chat_template, chat_stop_strings, resolve_chat_template


class LLM:
    """An engine in this process. Keyword arguments are EngineArgs fields (dtype, seed,
    max_model_len, max_num_seqs, enable_prefix_caching, load_format, ...)."""

    def __init__(self, model: str | None = None, **kwargs):
        unknown = set(kwargs) - EngineArgs.field_names()
        if unknown:
            raise TypeError(f"LLM() got unknown argument(s): {', '.join(sorted(unknown))}")
        self.engine = LLMEngine.from_engine_args(EngineArgs(model=model, **kwargs))
        self._counter = itertools.count()
        self._chat_template: tuple[str, str] | None = None

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers now (they also stop when this process exits)."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def generate(
        self,
        prompts: PromptInput | Seq[PromptInput],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One RequestOutput per prompt, in input order. Prompts: strings, token-id lists,
        or {"prompt_token_ids": [...]} dicts, or a mix."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [cast(PromptInput, prompts)]
        prompts = list(cast(Seq[PromptInput], prompts))
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} sampling params")
        # Validate everything before queueing anything: a bad prompt fails the call cleanly.
        processed = [self.engine.process_prompt(p) for p in prompts]
        for params in params_list:
            self.engine.validate_params(params)
            if params.structured_outputs is not None:  # a bad schema/regex/grammar: ValueError here
                self.engine.structured_output.compile(params.structured_outputs)
        ids = []
        for (text, token_ids), params in zip(processed, params_list):
            request_id = str(next(self._counter))
            self.engine.add_request(
                request_id, text, params.clone(output_kind="final_only"), prompt_token_ids=token_ids
            )
            ids.append(request_id)
        return cast(list[RequestOutput], self._run(ids, use_tqdm))

    def embed(
        self,
        prompts: PromptInput | Seq[PromptInput],
        pooling_params: PoolingParams | None = None,
        use_tqdm: bool = True,
    ) -> list[PoolingRequestOutput]:
        """One embedding per prompt (`.outputs.data`), in input order; the engine must run with
        runner="pooling" (or a sentence-transformers model)."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [cast(PromptInput, prompts)]
        params = pooling_params or PoolingParams()
        self.engine.validate_pooling_params(params)
        processed = [self.engine.process_prompt(p) for p in cast(Seq[PromptInput], prompts)]
        ids = []
        for text, token_ids in processed:
            ids.append(str(next(self._counter)))
            self.engine.add_request(ids[-1], text, prompt_token_ids=token_ids, pooling_params=params)
        return cast(list[PoolingRequestOutput], self._run(ids, use_tqdm))

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """Chat with one conversation (a list of messages) or several (a list of lists)."""
        one = bool(messages) and isinstance(messages[0], dict)
        conversations = cast(list[list[dict]], [messages] if one else list(messages))
        template = self.resolve_chat_template(chat_template)[0]
        extra_stops = chat_stop_strings(template)
        if extra_stops:
            sampling_params = sampling_params or SamplingParams()
            if isinstance(sampling_params, SamplingParams):
                sampling_params = sampling_params.clone(stop=_stops(sampling_params) + extra_stops)
            else:
                sampling_params = [p.clone(stop=_stops(p) + extra_stops) for p in sampling_params]
        prompts = [
            {
                "prompt_token_ids": apply_chat_template(
                    self.engine.tokenizer,
                    conv,
                    template,
                    add_generation_prompt=add_generation_prompt,
                    continue_final_message=continue_final_message,
                    chat_template_kwargs=chat_template_kwargs,
                )
            }
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def resolve_chat_template(self, chat_template: str | None = None) -> tuple[str, str]:
        """(template, where it came from): the argument, --chat-template, the tokenizer's, or the fallback."""
        if self.engine.tokenizer is None:
            raise ValueError("chat needs a tokenizer (the engine was started with skip_tokenizer_init)")
        if chat_template is not None:
            return resolve_chat_template(self.engine.tokenizer, chat_template)
        if self._chat_template is None:
            self._chat_template = resolve_chat_template(self.engine.tokenizer, self.engine.args.chat_template)
        return self._chat_template

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[EngineOutput]:
        engine = self.engine
        results: dict[str, EngineOutput] = {}
        progress = _progress(len(request_ids)) if use_tqdm and len(request_ids) > 1 else None
        try:
            if progress is not None:
                progress.start()
                task = progress.add_task("Generating", total=len(request_ids))
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        results[output.request_id] = output
                        if progress is not None:
                            progress.update(task, advance=1)
        except BaseException:
            engine.abort_request(request_ids)  # e.g. Ctrl-C: leave the engine clean for the next call
            raise
        finally:
            if progress is not None:
                progress.stop()
        return [results[i] for i in request_ids]


def _stops(params: SamplingParams) -> list[str]:
    return cast(list[str], params.stop)  # SamplingParams made it a list


def _progress(total: int):
    # Lazy: rich only when a progress bar is shown.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
