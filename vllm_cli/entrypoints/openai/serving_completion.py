"""POST /v1/completions: one engine request per prompt (text or token ids), run side by
side; choice index = prompt index * n + choice index, as OpenAI numbers them."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from aiohttp import web

from vllm_cli.entrypoints.openai.protocol import (
    APIError,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    now,
    random_id,
)
from vllm_cli.entrypoints.openai.serving_engine import OpenAIServing, checked_start, merge_streams, stream_sse
from vllm_cli.outputs import CompletionOutput, PositionLogprobs, RequestOutput


@dataclass
class _Choice:
    """One choice being assembled: text so far and its logprobs."""

    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    offset: int = 0  # characters of text so far, for logprobs.text_offset
    logprobs: CompletionLogprobs | None = None
    started: bool = False
    last: CompletionOutput | None = None


class ServingCompletion(OpenAIServing):
    async def handle(self, request: web.Request) -> web.StreamResponse:
        req = await self.parse(CompletionRequest, request)
        model = self.model_name(req.model)
        prompts = [await self.off_loop(self.process_prompt, p, "prompt") for p in req.prompts()]
        response_id, created = random_id("cmpl"), now()
        echo_logprobs = req.logprobs if req.echo else None
        constraint, constraint_param = self.structured_outputs(req)
        streams: list[AsyncGenerator[RequestOutput, None]] = []
        for i, (text, ids) in enumerate(prompts):
            params = self.sampling_params(
                req,
                self.max_tokens(req.max_tokens, len(ids), "max_tokens"),
                logprobs=req.logprobs,
                prompt_logprobs=echo_logprobs,
                structured_outputs=constraint,
            )
            stream = self.generate(text, ids, params, f"{response_id}-{i}")
            if constraint is not None:  # a schema that does not compile: a 400 before anything is sent
                try:
                    stream = await checked_start(stream, constraint_param)
                except APIError:
                    for started in streams:
                        await started.aclose()
                    raise
            streams.append(stream)
        outputs = merge_streams(streams)
        n = req.n or 1
        prompt_texts = [await self.off_loop(self._prompt_text, text, ids) if req.echo else "" for text, ids in prompts]
        choices = [_Choice() for _ in range(len(prompts) * n)]
        prompt_tokens = sum(len(ids) for _, ids in prompts)

        def update(i: int, out: RequestOutput, c: CompletionOutput) -> CompletionChoice:
            """Fold one delta into its choice; returns the delta as a choice (echo on its first)."""
            choice = choices[i * n + c.index]
            delta_text, token_ids = c.text, c.token_ids
            entries: list[PositionLogprobs | None] = list(c.logprobs or [])
            if not choice.started:
                choice.started = True
                delta_text = prompt_texts[i] + delta_text
                if echo_logprobs is not None:
                    token_ids = out.prompt_token_ids + token_ids
                    entries = list(out.prompt_logprobs or []) + entries
            delta_logprobs = None
            if req.logprobs is not None:
                delta_logprobs = self._logprobs(token_ids, entries, choice.offset)
                choice.logprobs = _extend(choice.logprobs, delta_logprobs)
            choice.text.append(delta_text)
            choice.offset += len(delta_text)
            choice.num_tokens += len(c.token_ids)
            choice.last = c
            return CompletionChoice(
                index=i * n + c.index,
                text=delta_text,
                logprobs=delta_logprobs,
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            )

        if req.stream:

            async def chunks() -> AsyncGenerator[CompletionResponse, None]:
                done: set[int] = set()
                async with aclosing(outputs):
                    async for i, out in outputs:
                        for c in out.outputs:
                            index = i * n + c.index
                            if index in done:
                                continue
                            delta = update(i, out, c)
                            if not (delta.text or delta.finish_reason or (delta.logprobs and delta.logprobs.tokens)):
                                continue
                            if c.finish_reason:
                                done.add(index)
                            yield CompletionResponse(id=response_id, created=created, model=model, choices=[delta])
                if req.include_usage:
                    usage = UsageInfo.of(prompt_tokens, sum(ch.num_tokens for ch in choices))
                    yield CompletionResponse(id=response_id, created=created, model=model, choices=[], usage=usage)

            return await stream_sse(request, chunks())

        async with aclosing(outputs):
            async for i, out in outputs:
                for c in out.outputs:
                    update(i, out, c)
        response = CompletionResponse(
            id=response_id,
            created=created,
            model=model,
            choices=[
                CompletionChoice(
                    index=k,
                    text="".join(ch.text),
                    logprobs=ch.logprobs,
                    finish_reason=ch.last.finish_reason if ch.last else None,
                    stop_reason=ch.last.stop_reason if ch.last else None,
                )
                for k, ch in enumerate(choices)
            ],
            usage=UsageInfo.of(prompt_tokens, sum(ch.num_tokens for ch in choices)),
        )
        return web.json_response(response.model_dump())

    def _prompt_text(self, text: str | None, ids: list[int]) -> str:
        if text is not None:
            return text
        return str(self.tokenizer.decode(ids)) if self.tokenizer is not None else ""

    def _logprobs(
        self, token_ids: list[int], entries: list[PositionLogprobs | None], offset: int
    ) -> CompletionLogprobs:
        """OpenAI's legacy shape. top_logprobs holds the top-k plus the sampled token (as OpenAI does)."""
        out = CompletionLogprobs()
        for token_id, entry in zip(token_ids, entries):
            if entry is None:  # the first prompt token has nothing before it to be predicted from
                text = self._prompt_text(None, [token_id])
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
            else:
                text = entry[token_id].decoded_token or ""
                out.token_logprobs.append(max(entry[token_id].logprob, -9999.0))
                out.top_logprobs.append({lp.decoded_token or "": max(lp.logprob, -9999.0) for lp in entry.values()})
            out.tokens.append(text)
            out.text_offset.append(offset)
            offset += len(text)
        return out


def _extend(total: CompletionLogprobs | None, delta: CompletionLogprobs) -> CompletionLogprobs:
    if total is None:
        return delta.model_copy(deep=True)
    for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        getattr(total, name).extend(getattr(delta, name))
    return total
