"""POST /v1/chat/completions: messages -> chat template -> token ids -> engine -> JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from aiohttp import web

from vllm_cli.entrypoints.openai.protocol import (
    APIError, ChatChoice, ChatChoiceLogprobs, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
    ChatLogprobContent, ChatResponseMessage, ChatStreamChoice, ChatTokenLogprob, DeltaMessage, UsageInfo, now,
    parse_request, random_id)
from vllm_cli.entrypoints.openai.serving_engine import OpenAIServing, stream_sse
from vllm_cli.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from vllm_cli.tokenizer import apply_chat_template, chat_stop_strings


class ServingChat(OpenAIServing):
    def __init__(self, *args, chat_template: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.chat_template = chat_template
        self.extra_stop = chat_stop_strings(chat_template)  # the fallback template's end marker

    def render(self, messages: list[dict], add_generation_prompt: bool, continue_final_message: bool,
               chat_template_kwargs: dict | None) -> list[int]:
        """Messages -> prompt token ids. The template was checked at start-up, so whatever fails
        here fails because of the request (roles out of order, odd chat_template_kwargs): a 400."""
        if self.tokenizer is None:
            raise APIError("chat needs a tokenizer, and this server was started without one", param="messages")
        try:
            return apply_chat_template(self.tokenizer, messages, self.chat_template,
                                       add_generation_prompt=add_generation_prompt,
                                       continue_final_message=continue_final_message,
                                       chat_template_kwargs=chat_template_kwargs)
        except Exception as e:  # jinja2.TemplateError, ValueError, TypeError, ... from transformers
            raise APIError(f"cannot apply the chat template: {e}", param="messages") from None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(ChatCompletionRequest, await request.read())
        model = self.model_name(req.model)
        ids = self.render([m.to_template_dict() for m in req.messages], req.add_generation_prompt,
                          req.continue_final_message, req.chat_template_kwargs)
        _, ids = self.process_prompt(ids, "messages")
        asked, param = ((req.max_completion_tokens, "max_completion_tokens") if req.max_completion_tokens is not None
                        else (req.max_tokens, "max_tokens"))
        top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling_params(req, self.max_tokens(asked, len(ids), param), self.extra_stop,
                                      logprobs=top_logprobs)
        response_id, created = random_id("chatcmpl"), now()
        outputs = self.generate(None, ids, params, response_id)
        if req.stream:
            chunks = self._chunks(outputs, response_id, created, model, params.n, len(ids), top_logprobs,
                                  req.include_usage)
            return await stream_sse(request, chunks)
        return web.json_response((await self._collect(outputs, response_id, created, model, params.n, len(ids),
                                                      top_logprobs)).model_dump())

    async def _collect(self, outputs: AsyncIterator[RequestOutput], response_id: str, created: int, model: str,
                       n: int, prompt_len: int, top_logprobs: int | None) -> ChatCompletionResponse:
        texts: list[list[str]] = [[] for _ in range(n)]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[PositionLogprobs]] = [[] for _ in range(n)]
        last: dict[int, CompletionOutput] = {}
        async with aclosing(outputs):
            async for out in outputs:
                for c in out.outputs:
                    texts[c.index].append(c.text)
                    tokens[c.index].extend(c.token_ids)
                    logprobs[c.index].extend(c.logprobs or [])
                    last[c.index] = c
        choices = [ChatChoice(index=i, message=ChatResponseMessage(content="".join(texts[i])),
                              logprobs=_chat_logprobs(tokens[i], logprobs[i], top_logprobs),
                              finish_reason=last[i].finish_reason, stop_reason=last[i].stop_reason)
                   for i in range(n)]
        usage = UsageInfo.of(prompt_len, sum(map(len, tokens)))
        return ChatCompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)

    async def _chunks(self, outputs: AsyncIterator[RequestOutput], response_id: str, created: int, model: str,
                      n: int, prompt_len: int, top_logprobs: int | None,
                      include_usage: bool) -> AsyncIterator[ChatCompletionChunk]:
        """A role chunk per choice, content deltas as tokens arrive, one finish_reason chunk per
        choice, then the usage chunk if asked for. One choice per chunk, as OpenAI does."""

        def chunk(choice: ChatStreamChoice | None, usage: UsageInfo | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=response_id, created=created, model=model,
                                       choices=[choice] if choice else [], usage=usage)

        for i in range(n):
            yield chunk(ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content="")))
        finished: set[int] = set()
        completion_tokens = 0
        async with aclosing(outputs):
            async for out in outputs:
                for c in out.outputs:
                    if c.index in finished:
                        continue
                    completion_tokens += len(c.token_ids)
                    with_logprobs = top_logprobs is not None and bool(c.token_ids)
                    if not (c.text or c.finish_reason or with_logprobs):
                        continue  # a token that completes no character yet
                    if c.finish_reason:
                        finished.add(c.index)
                    yield chunk(ChatStreamChoice(
                        index=c.index, delta=DeltaMessage(content=c.text),
                        logprobs=_chat_logprobs(c.token_ids, c.logprobs or [], top_logprobs),
                        finish_reason=c.finish_reason, stop_reason=c.stop_reason))
        if include_usage:
            yield chunk(None, UsageInfo.of(prompt_len, completion_tokens))


def _token(lp: Logprob) -> dict:
    text = lp.decoded_token or ""
    # -inf is not JSON; vLLM clamps the same way.
    return {"token": text, "logprob": max(lp.logprob, -9999.0), "bytes": list(text.encode("utf-8"))}


def _chat_logprobs(token_ids: list[int], entries: list[PositionLogprobs],
                   top_logprobs: int | None) -> ChatChoiceLogprobs | None:
    if top_logprobs is None:
        return None
    content = []
    for token_id, entry in zip(token_ids, entries):
        # The entry holds the top-k plus the sampled token when it ranks lower: keep exactly k.
        best = sorted(entry.values(), key=lambda lp: -lp.logprob)[:top_logprobs]
        content.append(ChatLogprobContent(**_token(entry[token_id]),
                                          top_logprobs=[ChatTokenLogprob(**_token(lp)) for lp in best]))
    return ChatChoiceLogprobs(content=content)
