"""What chat and text completions share: the model check, prompt and max_tokens validation,
request -> SamplingParams (response_format / structured_outputs / guided_* -> one
StructuredOutputsParams), the engine call (with metrics), merging several engine streams,
and the SSE writer.

Tokenizing, chat-template rendering and long detokenization run on one tokenizer thread
(`off_loop`), not on the event loop: a prompt of megabytes takes seconds to tokenize, and on the
loop every other client (and /health) would wait that long. The tokenizers release the GIL. A text
prompt longer than `max_prompt_chars` (max_model_len * MAX_CHARS_PER_TOKEN) cannot fit the context
and is refused before it is tokenized at all.

Every engine stream is closed with `aclosing`: a client that goes away (a failed write, or
the handler task cancelled) closes it at once, which aborts the request and frees its KV
blocks instead of waiting for garbage collection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import Any, TypeVar, cast

from aiohttp import web
from pydantic import BaseModel

from vllm_cli.engine.async_engine import AsyncEngine, EngineDeadError
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.entrypoints.openai.metrics import Metrics
from vllm_cli.entrypoints.openai.protocol import APIError, ModelT, SamplingRequest, ignored_fields, parse_request
from vllm_cli.logger import init_logger
from vllm_cli.outputs import RequestOutput
from vllm_cli.sampling_params import SamplingParams, StructuredOutputsParams

logger = init_logger(__name__)

_SAMPLING_FIELDS = frozenset(SamplingParams.__dataclass_fields__)

# A token is about 4 characters of English prose and fewer of code or most other scripts; the
# longest tokens of common vocabularies are runs of spaces or dashes, and no real prompt averages
# anywhere near 32 characters a token. So a text of more than max_model_len * 32 characters cannot
# fit the context, and is refused before the tokenizer spends seconds finding that out.
MAX_CHARS_PER_TOKEN = 32

# One thread, as vLLM: a fast tokenizer must not be called from two threads at once, and on a
# CPU server the engine's step needs the other cores.
_TOKENIZER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-cli-tokenizer")

T = TypeVar("T")


class OpenAIServing:
    runner_kind = "generate"  # the --runner this endpoint needs (the embeddings endpoint: pooling)

    def __init__(self, async_engine: AsyncEngine, metrics: Metrics, served_model_names: list[str]):
        self.async_engine = async_engine
        if async_engine.engine is None:
            raise ValueError("the engine has not been built")
        self.engine: LLMEngine = async_engine.engine
        self.tokenizer = self.engine.tokenizer
        self.metrics = metrics
        self.served_model_names = served_model_names
        self.max_prompt_chars = self.engine.max_model_len * MAX_CHARS_PER_TOKEN

    @staticmethod
    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the tokenizer thread (tokenizing, template rendering, decoding), so the
        event loop keeps serving; its exceptions (APIError included) are raised here."""
        return await asyncio.get_running_loop().run_in_executor(_TOKENIZER_THREAD, fn, *args)

    def check_prompt_chars(self, num_chars: int, param: str) -> None:
        """Refuse a text that cannot fit the context before tokenizing it (see MAX_CHARS_PER_TOKEN)."""
        if num_chars > self.max_prompt_chars:
            limit = self.engine.max_model_len
            raise APIError(
                f"This model's maximum context length is {limit} tokens, and the prompt has {num_chars} "
                f"characters: more than {self.max_prompt_chars} ({MAX_CHARS_PER_TOKEN} a token) cannot fit. "
                "Please reduce the length of the prompt.",
                param=param,
            )

    def check_runner(self) -> None:
        runner = self.engine.runner_kind
        if runner == self.runner_kind:
            return
        if runner == "pooling":
            raise APIError(
                "this server was started with --runner pooling: it serves /v1/embeddings only; start it without "
                "--runner pooling (or with --runner generate) for text generation",
                code="wrong_runner",
            )
        raise APIError(
            "this server does not serve embeddings: start it with `vllm-cli serve MODEL --runner pooling` "
            "to serve /v1/embeddings",
            code="wrong_runner",
        )

    async def parse(self, model: type[ModelT], request: web.Request) -> ModelT:
        """The request body as `model`; its unknown fields are ignored with one warning line, as vLLM does.
        A 400 first when the engine runs for the other kind of endpoint (generation vs embeddings)."""
        self.check_runner()
        req = parse_request(model, await request.read())
        if ignored := ignored_fields(req):
            logger.warning("The following fields were present in the request but ignored: %s", ", ".join(ignored))
        return req

    @staticmethod
    def structured_outputs(request: SamplingRequest) -> tuple[StructuredOutputsParams | None, str | None]:
        """The output constraint the request asks for, and the field that asked (for errors).
        response_format, vLLM's structured_outputs and its older guided_* fields each can; at most one may."""
        found: list[tuple[str, dict[str, Any]]] = []
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            found.append(("response_format", {"json_object": True}))
        elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
            found.append(("response_format", {"json": fmt.json_schema.json_schema}))
        if request.structured_outputs is not None:
            found.append(("structured_outputs", request.structured_outputs.model_dump(by_alias=True)))
        for kind in ("json", "regex", "choice", "grammar"):
            value = getattr(request, f"guided_{kind}")
            if value is not None:
                found.append((f"guided_{kind}", {kind: value}))
        if not found:
            return None, None
        if len(found) > 1:
            raise APIError(
                f"give at most one output constraint, got {' and '.join(name for name, _ in found)}", param=found[1][0]
            )
        param, kwargs = found[0]
        try:
            return StructuredOutputsParams(**kwargs), param
        except ValueError as e:
            raise APIError(str(e).replace("structured_outputs", param), param=param) from None

    def model_name(self, requested: str | None) -> str:
        """The name to answer with: the requested one, which must be served, or the first."""
        if requested is None:
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            served = ", ".join(f"`{name}`" for name in self.served_model_names)
            raise APIError(
                f"The model `{requested}` does not exist. This server serves: {served}.",
                404,
                param="model",
                code="model_not_found",
            )
        return requested

    def process_prompt(self, prompt: str | list[int], param: str) -> tuple[str | None, list[int]]:
        """Checked and tokenized (blocking: callers on the event loop go through `off_loop`)."""
        if isinstance(prompt, str):
            self.check_prompt_chars(len(prompt), param)
        try:
            return self.engine.process_prompt(prompt)
        except ValueError as e:
            raise APIError(str(e), param=param) from None

    def max_tokens(self, requested: int | None, prompt_len: int, param: str) -> int:
        """vLLM's rule: by default, up to the end of the context; asking for more is a 400."""
        limit = self.engine.max_model_len
        if requested is None:
            return limit - prompt_len
        if prompt_len + requested > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the messages, {requested} in the "
                "completion). Please reduce the length of the messages or completion.",
                param=param,
            )
        return requested

    def sampling_params(
        self, request: SamplingRequest, max_tokens: int, extra_stop: Sequence[str] = (), **overrides: Any
    ) -> SamplingParams:
        kwargs = request.sampling_kwargs()
        if "logit_bias" in kwargs:
            kwargs["logit_bias"] = self._logit_bias(kwargs["logit_bias"])
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        kwargs["stop"] = stop + [s for s in extra_stop if s not in stop]
        try:
            params = SamplingParams(max_tokens=max_tokens, **{**kwargs, **overrides})
            self.engine.validate_params(params)  # the engine's own limits, checked before the stream starts
            return params
        except ValueError as e:
            first_word = str(e).split(" ", 1)[0]
            raise APIError(str(e), param=first_word if first_word in _SAMPLING_FIELDS else None) from None

    def _logit_bias(self, bias: dict[str, float]) -> dict[int, float]:
        vocab = self.engine.vocab_size
        out = {}
        for key, value in bias.items():
            try:
                token = int(key)
            except ValueError:
                token = -1
            if not 0 <= token < vocab:
                raise APIError(f"logit_bias keys must be token ids in [0, {vocab}), got {key!r}", param="logit_bias")
            out[token] = min(max(value, -100.0), 100.0)  # OpenAI's range
        return out

    async def generate(
        self, prompt_text: str | None, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        """The engine's delta outputs for one prompt, timed for /metrics."""
        timer = self.metrics.track(params.n)
        finished = False
        prompt = prompt_text if prompt_text is not None else prompt_ids
        stream = cast(
            AsyncGenerator[RequestOutput, None],
            self.async_engine.generate(prompt, params, request_id, prompt_token_ids=prompt_ids),
        )
        async with aclosing(stream):
            try:
                async for output in stream:
                    timer.observe(output)
                    finished = output.finished
                    yield output
            finally:
                if not finished:
                    timer.aborted()


async def checked_start(
    stream: AsyncGenerator[RequestOutput, None], param: str | None
) -> AsyncGenerator[RequestOutput, None]:
    """`stream`, once its first output has come: the engine rejects a schema, regex or grammar that does
    not compile (ValueError) before the first output, and that must be a 400 naming `param`, not an
    error event inside a stream that has already answered 200."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    except ValueError as e:
        await stream.aclose()
        raise APIError(str(e), param=param) from None

    async def rest() -> AsyncGenerator[RequestOutput, None]:
        async with aclosing(stream):
            if first is not None:
                yield first
                async for output in stream:
                    yield output

    return rest()


async def merge_streams(streams: Sequence[AsyncGenerator[Any, None]]) -> AsyncGenerator[tuple[int, Any], None]:
    """Items of several async generators as they come, tagged with the generator's index.
    Closing the merged stream closes (aborts) every generator that is still running."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncGenerator[Any, None]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    queue.put_nowait((i, item))
            queue.put_nowait((i, done))
        except Exception as e:
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(payload: str, event: str | None = None) -> bytes:
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


async def stream_sse(
    request: web.Request, events: AsyncGenerator[BaseModel, None], *, typed_events: bool = False
) -> web.StreamResponse:
    """Send each event as `data: {json}`, then `data: [DONE]`. An engine failure mid-stream
    becomes an error event (the status line is long gone); a client that went away ends it.
    typed_events (the Responses API's framing): each event also names its `type` in an `event:` line,
    and no [DONE] follows (the last event says the stream is over)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        async with aclosing(events):
            try:
                async for event in events:
                    name = getattr(event, "type", None) if typed_events else None
                    await response.write(_sse(event.model_dump_json(), name))
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as e:
                error = server_error(e)
                payload = error.to_dict()
                if typed_events:  # the Responses API's error event, which also keeps chat's "error" object
                    payload = {"type": "error", **payload["error"], **payload}
                await response.write(_sse(json.dumps(payload), "error" if typed_events else None))
        if not typed_events:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client went away mid-stream: %s", request.path)
    return response


def server_error(e: Exception) -> APIError:
    """An unexpected failure: 503 when the engine has stopped, else 500; logged either way."""
    if isinstance(e, EngineDeadError):
        return APIError(str(e), 503, type="server_error", code="engine_dead")
    logger.error("request failed: %s: %s", type(e).__name__, e, exc_info=not isinstance(e, RuntimeError))
    return APIError(f"the request failed inside the server: {e}", 500, type="server_error")
