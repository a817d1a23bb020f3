"""Where `vllm-cli chat` sends a conversation: the engine in this process, or any
OpenAI-compatible server (--url). Both stream the reply as text deltas and fill in a
TurnStats; closing the stream early (Ctrl-C) aborts the request at the engine or server.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from vllm_cli.config import EngineArgs
from vllm_cli.outputs import RequestOutput
from vllm_cli.sampling_params import SamplingParams
from vllm_cli.tokenizer import apply_chat_template, chat_stop_strings, resolve_chat_template

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam


class BackendError(Exception):
    """A failure the user can act on (server unreachable, wrong key, context too long): one line."""


@dataclass
class TurnStats:
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None


class Backend(Protocol):
    description: str  # what the banner names: the model and where it runs

    def stream(self, messages: list[dict], params: dict, stats: TurnStats) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class EngineBackend:
    """An AsyncEngine on this process, the chat template applied here."""

    def __init__(self, engine_args: EngineArgs) -> None:
        # The engine brings torch: imported here, so that --help and `chat --url` never load it.
        from vllm_cli.engine.async_engine import AsyncEngine

        self.engine = AsyncEngine.from_engine_args(engine_args)
        engine = self.engine.engine
        try:
            if engine.tokenizer is None:
                raise ValueError("chat needs a tokenizer")
            self.tokenizer = engine.tokenizer
            # Resolved (and syntax-checked) once, before the first turn.
            self.template, self.template_desc = resolve_chat_template(self.tokenizer, engine_args.chat_template)
        except BaseException:
            self.engine.shutdown()
            raise
        self.extra_stop = chat_stop_strings(self.template)
        self.description = f"{engine.model_name} (in-process, {engine.device}, context {engine.max_model_len} tokens)"

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return apply_chat_template(self.tokenizer, messages, self.template)

    async def stream(self, messages: list[dict], params: dict, stats: TurnStats) -> AsyncIterator[str]:
        sampling = SamplingParams(**{"max_tokens": None, **params})  # None: up to the end of the context
        stop = list(sampling.stop or [])  # SamplingParams has made it a list
        sampling.stop = stop + [s for s in self.extra_stop if s not in stop]
        try:
            ids = self.prompt_ids(messages)
        except Exception as e:  # jinja2's errors, or a template's raise_exception (roles out of order)
            raise BackendError(f"cannot apply the chat template: {e}") from None
        stats.prompt_tokens = len(ids)
        try:
            # As a dict, so that the engine checks the prompt against the context length.
            # generate() is an async generator (aclose() aborts the request), annotated as an AsyncIterator.
            request = self.engine.generate({"prompt_token_ids": ids}, sampling)
            async with aclosing(cast(AsyncGenerator[RequestOutput, None], request)) as outputs:
                async for out in outputs:
                    delta = out.outputs[0]
                    stats.completion_tokens += len(delta.token_ids)
                    stats.finish_reason = delta.finish_reason
                    if delta.text:
                        yield delta.text
        except (ValueError, RuntimeError) as e:  # e.g. the conversation outgrew the context
            raise BackendError(str(e)) from None

    async def aclose(self) -> None:
        self.engine.shutdown()


# OpenAI's own sampling arguments; the rest go in the body as vLLM's extensions.
_OPENAI_PARAMS = {"temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty", "stop"}


class OpenAIBackend:
    """Any OpenAI-compatible server: ours (`vllm-cli serve`), vLLM's or another."""

    def __init__(self, client: openai.AsyncOpenAI, model: str, url: str) -> None:
        self.client, self.model, self.url = client, model, url
        self.description = f"{model} at {url}"

    @classmethod
    async def connect(cls, url: str, api_key: str | None, model: str | None) -> OpenAIBackend:
        """Reach the server once up front, so that a wrong URL or key fails before the first
        message; pick its first model when none is named. The URL may omit the /v1 that
        OpenAI-compatible servers put their API under (http://localhost:8000 works)."""
        import openai  # an optional dependency (the engine backend needs none of it), and ~1 s to import

        url = url.rstrip("/")
        candidates = [url] if url.endswith("/v1") else [url, url + "/v1"]
        for base in candidates:
            # No retries: an unreachable server should say so at once, not after back-offs.
            client = openai.AsyncOpenAI(base_url=base, api_key=api_key or "EMPTY", max_retries=0)
            try:
                models = [m.id async for m in client.models.list()]
                break
            except openai.NotFoundError:
                models = []  # no /models here: maybe under /v1; else fine when a model is named
                if base != candidates[-1]:
                    await client.close()
            except openai.OpenAIError as e:
                await client.close()
                raise _error(e, base) from None
        url = base
        if model is None:
            if not models:
                await client.close()
                raise BackendError(f"{url} lists no models; name one with --model-name")
            model = models[0]
        return cls(client, model, url)

    async def stream(self, messages: list[dict], params: dict, stats: TurnStats) -> AsyncIterator[str]:
        import openai  # optional: see connect()

        kwargs = {k: v for k, v in params.items() if k in _OPENAI_PARAMS and v is not None}
        extra = {k: v for k, v in params.items() if k not in _OPENAI_PARAMS and v is not None}
        try:
            chunks = await self.client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra or None,
                **kwargs,
            )
            async with aclosing(chunks):  # closing the stream drops the connection: the server aborts
                async for chunk in chunks:
                    if chunk.usage is not None:
                        stats.prompt_tokens = chunk.usage.prompt_tokens
                        stats.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        stats.finish_reason = choice.finish_reason or stats.finish_reason
                        if choice.delta.content:
                            if chunk.usage is None:  # a count until the usage chunk gives the real one
                                stats.completion_tokens += 1
                            yield choice.delta.content
        except openai.OpenAIError as e:
            raise _error(e, self.url) from None

    async def aclose(self) -> None:
        await self.client.close()


def _error(e: Exception, url: str) -> BackendError:
    import openai  # optional: see OpenAIBackend.connect()

    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        reason = f" ({str(cause).strip().splitlines()[0]})" if cause and str(cause).strip() else ""
        return BackendError(f"cannot reach the server at {url}{reason}")
    if isinstance(e, openai.APIStatusError):
        message = e.message
        body = e.body.get("error", e.body) if isinstance(e.body, dict) else None
        if isinstance(body, dict) and body.get("message"):
            message = body["message"]
        if isinstance(e, openai.AuthenticationError):
            return BackendError(f"the server at {url} refused the API key (--api-key): {message}")
        return BackendError(f"the server at {url} answered {e.status_code}: {message}")
    return BackendError(f"{url}: {e}")
