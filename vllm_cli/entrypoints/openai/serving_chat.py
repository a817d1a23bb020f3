"""POST /v1/chat/completions: messages (and tools) -> chat template -> token ids -> engine -> JSON or SSE.

Tool choice (see choice_output.py for how the reply is read):
- named and "required" are constrained decoding: the tool's parameters schema, or vLLM's array of
  {"name", "parameters"} (choice_output.required_tools_schema), so the arguments always parse;
- "auto" (given, or implied by tools without tool_choice, as OpenAI does) needs the server started
  with --enable-auto-tool-choice --tool-call-parser NAME. Without them an explicit "auto" is vLLM's
  400; tools without a tool_choice (LangChain's bind_tools default) are answered as "none" (tools
  still shown to the template, the reply is text) with a warning in the server log, so a chat
  that merely has tools bound keeps working;
- "none": text; the tools still go to the template, as vLLM does by default.

Reasoning (--reasoning-parser): the thinking goes to reasoning_content, the rest is the answer that
tool parsing reads. With an output constraint (response_format, structured_outputs, named or
required tool choice) the reasoning parser is not used: the engine constrains the output from its
first token, so there is no thinking to split off, and all of the output is the answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from vllm_cli.entrypoints.openai.choice_output import ChoiceOutput, required_tools_schema
from vllm_cli.entrypoints.openai.protocol import (
    APIError,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobContent,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    DeltaMessage,
    NamedToolChoice,
    UsageInfo,
    now,
    random_id,
)
from vllm_cli.entrypoints.openai.serving_engine import OpenAIServing, checked_start, stream_sse
from vllm_cli.logger import init_logger
from vllm_cli.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from vllm_cli.sampling_params import SamplingParams, StructuredOutputsParams
from vllm_cli.tokenizer import apply_chat_template, chat_stop_strings

logger = init_logger(__name__)


@dataclass
class ChatPlan:
    """A chat request ready for the engine (ServingChat.plan)."""

    ids: list[int]  # the rendered prompt
    params: SamplingParams
    choices: list[ChoiceOutput]  # one output parser per choice (n)
    constraint_param: str | None  # the field that constrains the output (named in a compile error), if any
    top_logprobs: int | None


AUTO_NEEDS_FLAGS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


class ServingChat(OpenAIServing):
    def __init__(
        self,
        *args: Any,
        chat_template: str,
        enable_auto_tools: bool = False,
        tool_parser: type | None = None,
        reasoning_parser: type | None = None,
        **kwargs: Any,
    ):
        """tool_parser / reasoning_parser: the classes (a fresh instance serves each choice)."""
        super().__init__(*args, **kwargs)
        self.chat_template = chat_template
        self.extra_stop = chat_stop_strings(chat_template)  # the fallback template's end marker
        self.enable_auto_tools = enable_auto_tools
        self.tool_parser = tool_parser
        self.reasoning_parser = reasoning_parser
        self._warned_implicit_auto = False

    def render(
        self,
        messages: list[dict],
        add_generation_prompt: bool,
        continue_final_message: bool,
        chat_template_kwargs: dict | None,
        tools: list[dict] | None = None,
    ) -> list[int]:
        """Messages -> prompt token ids (blocking: callers on the event loop go through `off_loop`).
        The template was checked at start-up, so whatever fails here fails because of the request
        (roles out of order, odd chat_template_kwargs): a 400. Messages whose text alone cannot fit
        the context are refused before rendering."""
        if self.tokenizer is None:
            raise APIError("chat needs a tokenizer, and this server was started without one", param="messages")
        self.check_prompt_chars(sum(map(_text_length, messages)), "messages")
        try:
            return apply_chat_template(
                self.tokenizer,
                messages,
                self.chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                chat_template_kwargs=chat_template_kwargs,
                tools=tools,
            )
        except Exception as e:  # jinja2.TemplateError, ValueError, TypeError, ... from transformers
            raise APIError(f"cannot apply the chat template: {e}", param="messages") from None

    def tool_mode(self, req: ChatCompletionRequest) -> tuple[str | None, str | None]:
        """(None | "auto" | "required" | "named", the named function) for this request."""
        choice = req.tool_choice
        if not req.tools or choice == "none":
            return None, None
        if isinstance(choice, NamedToolChoice):
            return "named", choice.function.name
        if choice == "required":
            return "required", None
        if self.enable_auto_tools and self.tool_parser is not None:
            return "auto", None
        if choice == "auto":
            raise APIError(AUTO_NEEDS_FLAGS, param="tool_choice")
        if not self._warned_implicit_auto:
            self._warned_implicit_auto = True
            logger.warning(
                "A request has tools but no tool_choice (OpenAI's default: auto), and this server "
                "parses no tool calls: answering with text, as for tool_choice 'none'. Start it with "
                "--enable-auto-tool-choice --tool-call-parser NAME to have calls parsed."
            )
        return None, None

    async def plan(self, req: ChatCompletionRequest) -> ChatPlan:
        """Everything a chat request decides before the engine runs: the prompt (template, tools), the
        tool mode, the output constraint, the sampling parameters and each choice's output parser.
        /v1/responses runs the same plan on the chat request it translates to."""
        mode, name = self.tool_mode(req)
        tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools] if req.tools else None
        ids = await self.off_loop(
            self.render,
            [m.to_template_dict() for m in req.messages],
            req.add_generation_prompt,
            req.continue_final_message,
            req.chat_template_kwargs,
            tools,
        )
        _, ids = await self.off_loop(self.process_prompt, ids, "messages")
        asked, param = (
            (req.max_completion_tokens, "max_completion_tokens")
            if req.max_completion_tokens is not None
            else (req.max_tokens, "max_tokens")
        )
        top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        constraint, constraint_param = self.structured_outputs(req)
        parallel = req.parallel_tool_calls is not False
        if mode in ("named", "required"):
            if constraint is not None:
                raise APIError(
                    f"{constraint_param} cannot be combined with a named or required tool_choice",
                    param=constraint_param,
                )
            assert tools is not None
            schema = (
                next(t["function"].get("parameters") for t in tools if t["function"]["name"] == name)
                if mode == "named"
                else required_tools_schema(tools, parallel)
            )
            # Compact JSON: a small model cannot wander off into whitespace inside the arguments.
            constraint = StructuredOutputsParams(
                json=schema or {"type": "object", "properties": {}}, disable_any_whitespace=True
            )
            constraint_param = "tools"
        overrides: dict[str, Any] = {"logprobs": top_logprobs}
        if constraint is not None:
            overrides["structured_outputs"] = constraint
        tool_parser = self.tool_parser if mode == "auto" else None
        reasoning_parser = self.reasoning_parser if constraint is None else None
        if any(getattr(cls, "needs_special_tokens", False) for cls in (tool_parser, reasoning_parser)):
            overrides["skip_special_tokens"] = False  # the parser reads markers that are special tokens
        params = self.sampling_params(req, self.max_tokens(asked, len(ids), param), self.extra_stop, **overrides)
        prompt_text = await self.off_loop(self._decode, ids) if reasoning_parser is not None else ""
        choices = [
            ChoiceOutput(
                mode,
                name=name,
                tools=tools,
                parallel=parallel,
                tool_parser=tool_parser(self.tokenizer) if tool_parser else None,
                reasoning_parser=self._reasoning_parser(reasoning_parser, prompt_text),
            )
            for _ in range(params.n)
        ]
        return ChatPlan(ids, params, choices, constraint_param, top_logprobs)

    async def start(self, plan: ChatPlan, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        """The engine's outputs for a plan; a constraint that does not compile is a 400 before any output."""
        outputs = self.generate(None, plan.ids, plan.params, request_id)
        if plan.constraint_param is not None:
            outputs = await checked_start(outputs, plan.constraint_param)
        return outputs

    async def handle(self, request: web.Request) -> web.StreamResponse:
        req = await self.parse(ChatCompletionRequest, request)
        model = self.model_name(req.model)
        plan = await self.plan(req)
        response_id, created = random_id("chatcmpl"), now()
        outputs = await self.start(plan, response_id)
        prompt_len, choices, top_logprobs = len(plan.ids), plan.choices, plan.top_logprobs
        if req.stream:
            chunks = self._chunks(
                outputs, response_id, created, model, choices, prompt_len, top_logprobs, req.include_usage
            )
            return await stream_sse(request, chunks)
        return web.json_response(
            (await self._collect(outputs, response_id, created, model, choices, prompt_len, top_logprobs)).model_dump()
        )

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids)) if self.tokenizer is not None else ""

    def _reasoning_parser(self, cls: type | None, prompt: str) -> Any:
        if cls is None:
            return None
        parser = cls(self.tokenizer)
        parser.observe_prompt(prompt)  # e.g. a template that opened <think> (or closed it: thinking off)
        return parser

    async def _collect(
        self,
        outputs: AsyncGenerator[RequestOutput, None],
        response_id: str,
        created: int,
        model: str,
        parsers: list[ChoiceOutput],
        prompt_len: int,
        top_logprobs: int | None,
    ) -> ChatCompletionResponse:
        n = len(parsers)
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
        choices = []
        for i in range(n):
            message = parsers[i].final("".join(texts[i]))
            finish_reason = last[i].finish_reason
            if message.tool_calls and finish_reason == "stop":
                finish_reason = "tool_calls"
            choices.append(
                ChatChoice(
                    index=i,
                    message=ChatResponseMessage(
                        content=message.content,
                        tool_calls=message.tool_calls,
                        reasoning_content=message.reasoning_content,
                    ),
                    logprobs=_chat_logprobs(tokens[i], logprobs[i], top_logprobs),
                    finish_reason=finish_reason,
                    stop_reason=last[i].stop_reason,
                )
            )
        usage = UsageInfo.of(prompt_len, sum(map(len, tokens)))
        return ChatCompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)

    async def _chunks(
        self,
        outputs: AsyncGenerator[RequestOutput, None],
        response_id: str,
        created: int,
        model: str,
        parsers: list[ChoiceOutput],
        prompt_len: int,
        top_logprobs: int | None,
        include_usage: bool,
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """A role chunk per choice, content (reasoning, tool call) deltas as tokens arrive, one
        finish_reason chunk per choice, then the usage chunk if asked for. One choice per chunk,
        as OpenAI does."""

        def chunk(choice: ChatStreamChoice | None, usage: UsageInfo | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=response_id, created=created, model=model, choices=[choice] if choice else [], usage=usage
            )

        for i in range(len(parsers)):
            yield chunk(ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content="")))
        finished: set[int] = set()
        completion_tokens = 0
        async with aclosing(outputs):
            async for out in outputs:
                for c in out.outputs:
                    if c.index in finished:
                        continue
                    completion_tokens += len(c.token_ids)
                    parser = parsers[c.index]
                    delta = parser.feed(c.text)
                    choice_logprobs = _chat_logprobs(c.token_ids, c.logprobs or [], top_logprobs)
                    with_logprobs = top_logprobs is not None and bool(c.token_ids)
                    if not c.finish_reason:
                        if delta is not None or with_logprobs:
                            yield chunk(
                                ChatStreamChoice(index=c.index, delta=delta or DeltaMessage(), logprobs=choice_logprobs)
                            )
                        continue  # else a token that completes no character yet
                    finished.add(c.index)
                    tail = parser.finish()
                    if delta is not None and tail is not None:  # two chunks: a call's start, then its rest
                        yield chunk(ChatStreamChoice(index=c.index, delta=delta, logprobs=choice_logprobs))
                        delta, choice_logprobs = tail, None
                    finish_reason = "tool_calls" if parser.called and c.finish_reason == "stop" else c.finish_reason
                    yield chunk(
                        ChatStreamChoice(
                            index=c.index,
                            delta=delta or tail or DeltaMessage(),
                            logprobs=choice_logprobs,
                            finish_reason=finish_reason,
                            stop_reason=c.stop_reason,
                        )
                    )
        if include_usage:
            yield chunk(None, UsageInfo.of(prompt_len, completion_tokens))


def _text_length(message: dict) -> int:
    """Characters of a template message's text (a string or text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return len(content)
    return sum(len(part.get("text") or "") for part in content or ())


def _token(lp: Logprob) -> dict:
    text = lp.decoded_token or ""
    # -inf is not JSON; vLLM clamps the same way.
    return {"token": text, "logprob": max(lp.logprob, -9999.0), "bytes": list(text.encode("utf-8"))}


def _chat_logprobs(
    token_ids: list[int], entries: list[PositionLogprobs], top_logprobs: int | None
) -> ChatChoiceLogprobs | None:
    if top_logprobs is None:
        return None
    content = []
    for token_id, entry in zip(token_ids, entries):
        # The entry holds the top-k plus the sampled token when it ranks lower: keep exactly k.
        best = sorted(entry.values(), key=lambda lp: -lp.logprob)[:top_logprobs]
        content.append(
            ChatLogprobContent(**_token(entry[token_id]), top_logprobs=[ChatTokenLogprob(**_token(lp)) for lp in best])
        )
    return ChatChoiceLogprobs(content=content)
